"""One Markdown table renderer for every table the stages put in metadata or a report."""

from __future__ import annotations

import pandas as pd


def markdown_table(table: pd.DataFrame) -> str:
    """``table`` as a Markdown table: its index (named by ``index.name``) as the first column, every
    cell as ``str`` (format the values before, as the display tables do)."""
    head = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in table.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in row]) + " |")
    return "\n".join(lines)


__all__ = ["markdown_table"]
