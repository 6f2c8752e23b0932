"""Prefect flows of segml."""
