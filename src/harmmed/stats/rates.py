"""Proportions with their intervals: the Wilson interval and the generation-rates table's
canonical order and file format (torch-free: the generation figure reads it)."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

import pandas as pd

from ..constants import GENERATION_CONDITIONS as CONDITIONS
from ..constants import PROMPT_KINDS


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; exact 0 and 1 at the edges.

    Wilson rather than the normal approximation because rates here are often 0 or 1 on a few
    dozen prompts, where the normal interval collapses to a point. NaN for n = 0.
    """
    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return float(low), float(high)


def canonical_rate_order(rates: pd.DataFrame) -> pd.DataFrame:
    """Sort by judge, then condition and prompt kind in their listed orders (unknown ones last)."""
    rank = {"condition": {c: i for i, c in enumerate(CONDITIONS)},
            "prompt_kind": {k: i for i, k in enumerate(PROMPT_KINDS)}}
    keys = rates.assign(_c=rates["condition"].map(rank["condition"]).fillna(len(CONDITIONS)),
                        _k=rates["prompt_kind"].map(rank["prompt_kind"]).fillna(len(PROMPT_KINDS)))
    keys = keys.sort_values(["judge", "_c", "condition", "_k", "prompt_kind"], kind="mergesort")
    return keys.drop(columns=["_c", "_k"]).reset_index(drop=True)


def write_rates(rates: pd.DataFrame, path: str | Path) -> None:
    rates.to_csv(path, index=False, lineterminator="\n")


def read_rates(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, dtype={"condition": str, "prompt_kind": str, "judge": str})
