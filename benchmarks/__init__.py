"""kavachOS benchmarks: ``python -m benchmarks [--quick] [--only a,b,c,d,e]`` (see docs/performance.md)."""
