"""Benchmarks for berth (scripts, not tests): run with ``python -m benchmarks.<name>``."""
