"""Benchmarks. ``make bench`` (``python -m bench``) runs every module here that defines
``run() -> dict`` and writes its result to ``bench/results/<module>.json``."""
