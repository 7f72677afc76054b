"""Prefect flows and the d2lflow command line."""
