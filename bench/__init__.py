"""Benchmarks: ``python -m bench.NAME`` (each prints its summary as the last line)."""
