"""Benchmarks (``make bench``); each module runs on its own with ``python -m bench.NAME``."""
