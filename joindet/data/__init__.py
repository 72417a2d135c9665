"""Datasets: the built-in synthetic shapes set and dataset registration."""
