"""Command-line tools: ``python -m joindet.tools.<name>``."""
