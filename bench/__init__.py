"""Benchmarks that print figures (added with the features they measure)."""
