"""Markdown pieces the analysis report and its findings share: tables and numbers."""

from __future__ import annotations


def md_table(headers, rows) -> str:
    if not rows:
        return "_(nothing to show: the store has no cells for this table)_"
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def num(x: float) -> str:
    """Three significant digits; NaN as a dash."""
    return f"{x:.3g}" if x == x else "–"
