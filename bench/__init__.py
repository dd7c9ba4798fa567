"""Benchmarks: `python -m bench CASE ...` (see bench/README.md)."""
