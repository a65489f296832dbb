"""kavachOS benchmarks: ``python -m benchmarks [--quick] [--only a,b,c,d,e,f]`` (see docs/performance.md)."""
