"""Reproducible speed and memory measurements of the pack (not run by CI; see benchmarks/RESULTS.md)."""
