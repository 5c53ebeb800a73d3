"""Benchmarks of dho-share over real HTTP: ``python -m benchmarks`` (see BENCHMARKS.md)."""
