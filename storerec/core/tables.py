"""Markdown tables for the reports (evaluation, A/B, training, benchmarks, soak)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "l") -> str:
    """A GitHub-flavoured Markdown table, without a trailing newline.

    Parameters
    ----------
    header
        Column titles.
    rows
        Cells, already formatted (anything else goes through ``str``); ``|`` in a cell is escaped.
    align
        ``"l"`` (left), ``"r"`` (right) or ``"c"`` (centre) for every column, or one letter per
        column (``"lrr"``).

    Example
    -------
    >>> print(markdown_table(["model", "NDCG@10"], [["als", "0.1234"]], align="lr"))
    | model | NDCG@10 |
    |---|---:|
    | als | 0.1234 |
    """
    letters = align * len(header) if len(align) == 1 else align
    if len(letters) != len(header):
        raise ValueError(f"align has {len(letters)} letters for {len(header)} columns")

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join(_RULES[a] for a in letters) + "|", *(line(r) for r in rows)])
