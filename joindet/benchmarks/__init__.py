"""Benchmark scripts: ``python -m joindet.benchmarks.<name>``; each prints a table, writes JSON, and
measures its ratios side by side in one run (medians after a warm-up)."""
import json

__all__ = ["markdown_table", "write_rows"]


def markdown_table(rows, cols):
    """A Markdown table of ``rows`` (dicts) with the columns ``cols``: floats with 2 decimals, None as -."""
    fmt = lambda v: "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows])


def write_rows(path, rows):
    """Write ``rows`` as JSON to ``path`` (nothing when ``path`` is empty)."""
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=2)
