"""Deterministic synthetic datasets in the real on-disk layouts, for offline runs and tests."""
