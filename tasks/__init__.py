"""Stage implementations for d2lflow: plain, typed functions plus a small CLI (``python -m tasks``)."""
