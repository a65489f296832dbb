"""Independent OAuth servers the conformance kit is run against (tests/test_conformance_peers.py)."""
