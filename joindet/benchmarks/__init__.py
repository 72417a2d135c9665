"""Benchmark scripts: ``python -m joindet.benchmarks.<name>``; each prints a table, writes JSON, and
measures its ratios side by side in one run (medians after a warm-up)."""
