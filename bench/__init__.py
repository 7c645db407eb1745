"""The load-benchmark harness: ``python -m bench``."""
