"""The run summary: every model's claims rows with each statistic's calibration mark, as one long
table (results/summary.csv) and as a statistics x models Markdown table (figures/summary.md, and
the results tables of README.md and docs/results.md).

The CSV holds nothing but what the claims and calibration tables hold, so two runs that agree
write the same bytes whatever their commit or time; those go in the Markdown header. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

SUMMARY_COLUMNS: list[str] = ["model", "claim", "statistic", "value", "ci_low", "ci_high", "threshold",
                              "verdict", "n_pairs", "calibration"]
NO_GROUND_TRUTH = "no ground truth"  # the mark of a statistic that calibration.csv never judged
MISSING = "-"  # a statistic one model's claims table does not have


def summary_table(claims: Mapping[str, pd.DataFrame], marks: Mapping[str, str]) -> pd.DataFrame:
    """One row per (model, claims row): models in the order given (the config's), rows in each
    claims table's own order, every row with its statistic's calibration mark."""
    rows = []
    for model, table in claims.items():
        for record in table.to_dict("records"):
            rows.append({"model": model, **{c: record[c] for c in SUMMARY_COLUMNS[1:-1]},
                         "calibration": marks.get(record["statistic"], NO_GROUND_TRUTH)})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def read_summary(path: str | Path) -> pd.DataFrame:
    """A summary.csv: numbers as floats (NaN where blank), every other column as text."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in ("value", "ci_low", "ci_high", "threshold", "n_pairs"):
        frame[column] = pd.to_numeric(frame[column].replace("", math.nan))
    return frame


def _number(value: float, whole: bool) -> str:
    """Two decimals, the precision the docs quote (``whole``: a count of layers, no decimals);
    never ``-0.00``."""
    text = f"{value:.0f}" if whole else f"{value:.2f}"
    return text.removeprefix("-") if float(text) == 0 else text


def verdict_cell(record: Mapping[str, Any]) -> str:
    """``verdict value (ci_low to ci_high)``; the numbers that are missing are left out, and a
    statistic whose numbers are all whole (a count of layers) is written without decimals."""
    numbers = [record[c] for c in ("value", "ci_low", "ci_high") if not _missing(record[c])]
    whole = bool(numbers) and all(float(n).is_integer() for n in numbers)
    parts = [str(record["verdict"])]
    if not _missing(record["value"]):
        parts.append(_number(record["value"], whole))
    if not (_missing(record["ci_low"]) or _missing(record["ci_high"])):
        parts.append(f"({_number(record['ci_low'], whole)} to {_number(record['ci_high'], whole)})")
    return " ".join(parts)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def summary_markdown_table(summary: pd.DataFrame, grid_marks: Mapping[str, str] | None = None) -> list[str]:
    """Markdown lines: one row per statistic (in order of first appearance), one verdict column
    per model (in order of first appearance), then the statistic's calibration mark, and with
    ``grid_marks`` (statistic -> mark) its calibration on the grid of plants too."""
    models = list(dict.fromkeys(summary["model"]))
    statistics = list(dict.fromkeys(zip(summary["claim"], summary["statistic"])))
    cells = {(r["model"], r["statistic"]): verdict_cell(r) for r in summary.to_dict("records")}
    marks = dict(zip(summary["statistic"], summary["calibration"]))
    header = ["claim", "statistic", *models, "calibration", *(["on the calibration grid"] if grid_marks else [])]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for claim, statistic in statistics:
        row = [claim, f"`{statistic}`", *(cells.get((m, statistic), MISSING) for m in models), marks[statistic]]
        if grid_marks:
            row.append(grid_marks.get(statistic, MISSING))
        lines.append("| " + " | ".join(row) + " |")
    return lines


LEGEND = ("Each cell: the model's verdict, then the value and its CI (what each statistic measures: "
          "docs/outputs.md, the claims table). `calibration`: whether the statistic gave the verdict its ground "
          "truth implies on every planted model that has one (docs/claims-and-calibration.md).")


def summary_markdown(summary: pd.DataFrame, header: Sequence[str]) -> str:
    """figures/summary.md: a title, the ``header`` lines (commit, time), the table and its legend."""
    return "\n".join(["# Run summary", "", *header, "", *summary_markdown_table(summary), "", LEGEND, ""])
