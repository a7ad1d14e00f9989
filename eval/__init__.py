"""Metric modules and benchmarks. Metrics are plain functions (no network), imported by path."""
