"""Benchmarks (not tests: scripts named bench_*.py, which pytest does not collect). Figures go in BENCHMARKS.md."""
