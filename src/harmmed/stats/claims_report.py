"""claims.md: a model's claims table as Markdown, with the verdict rule, each statistic's
calibration mark, the claims' wording and the statistics' definitions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .claims import CLAIM_COLUMNS, CLAIM_TEXT, DEFINITIONS

VERDICT_RULE = (
    "Each row is a statistic measured on this model: a mean over held-out prompt pairs of a "
    "per-pair effect in units of that pair's total effect (TE), with a seeded percentile-bootstrap "
    "CI over pairs. `supported` when the whole CI lies above the threshold (ci_low > threshold), "
    "`not supported` when it lies below, `inconclusive` when it touches or crosses it. A metric "
    "whose held-out TE does not clearly exceed its behaviour threshold gets `not applicable (no "
    "behaviour)` for C1-C3. `not run` marks a statistic without data. The C4 probe depth is "
    "supported by a value *below* its threshold. The column `calibrated` says whether the "
    "statistic gave the verdict its ground truth implies on every planted model that has one, and "
    "on which sides (results/calibration.csv): only a statistic calibrated on both sides has been "
    "shown to come out either way; an uncalibrated statistic is not evidence either way."
)


def _markdown_cell(value: Any) -> str:
    """Stable text for a Markdown cell: %.4g for numbers, blank for missing."""
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def claims_markdown(df: pd.DataFrame, title: str, calibrated: Mapping[str, str] | None = None) -> str:
    """Markdown rendering: the verdict rule, the table with a `calibrated` column, definitions."""
    columns = [*CLAIM_COLUMNS, "calibrated"]
    lines = [f"# {title}", "", VERDICT_RULE, "",
             "| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for record in df[list(CLAIM_COLUMNS)].to_dict("records"):
        mark = (calibrated or {}).get(record["statistic"], "no ground truth")
        lines.append("| " + " | ".join(_markdown_cell(record[c]) for c in CLAIM_COLUMNS) + f" | {mark} |")
    lines += ["", "Claims:", "", *(f"- {c}: {text}" for c, text in CLAIM_TEXT.items())]
    lines += ["", "Definitions:", "", *(f"- {text}" for text in DEFINITIONS), ""]
    return "\n".join(lines)
