"""How numbers print in the tables of the reports (the leaderboard, the statistics section, the
tuning tables, `bench compare`): fixed decimals, '-' for a missing value, never '-0.0'; p-values
with 3 decimals, or 2 significant digits below 0.001; intervals as ``[lo, hi]``; and the tables
themselves (``markdown_table``: GitHub pipe tables that print each cell as given, never re-parsing
a formatted number). The one number formatter: a table that prints a number another way is a
second opinion on its precision.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from tabulate import tabulate


def fmt(value: float | None, decimals: int, sign: bool = False, grouping: bool = False) -> str:
    """Fixed ``decimals``, '-' for missing (None, NaN), never '-0.0'; ``sign``: '+' on positive
    values; ``grouping``: thousands separated by ',' (``1,234.5``)."""
    if pd.isna(value):
        return "-"
    text = f"{value:{'+' if sign else ''}{',' if grouping else ''}.{decimals}f}"
    return text if float(text.replace(",", "")) != 0 else f"{0:.{decimals}f}"


def fmt_p(p: float) -> str:
    """p-values as printed: 3 decimals, or 2 significant digits below 0.001."""
    if np.isnan(p):
        return "-"
    return f"{p:.2g}" if 0 < p < 0.001 else f"{p:.3f}"


def ci_text(ci: tuple[float, float], decimals: int = 1, sign: bool = False) -> str:
    """An interval as ``[lo, hi]``, each end as ``fmt`` prints it."""
    return f"[{fmt(ci[0], decimals, sign)}, {fmt(ci[1], decimals, sign)}]"


def markdown_table(rows: list[list[str]], headers: list[str]) -> str:
    """A GitHub pipe table of already formatted cells (tabulate with number parsing off: '1.50'
    stays '1.50', '-0.0' never appears)."""
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
