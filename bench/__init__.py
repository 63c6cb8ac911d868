"""Benchmarks of the pack: ``python -m bench.cpu`` (CPU ratios, see docs/PERFORMANCE.md)."""
