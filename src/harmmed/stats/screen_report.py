"""How good the unit screen is, layer by layer, and what it finds (torch-free).

Everything here reads the screen's tables (``screen.csv``, ``screen_heldout.csv``), so the
report and the figures can be rebuilt from the result files alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io.storage import read_table

REPORT_COLUMNS = ["pair_id", "metric", "positions", "layer", "y_benign", "y_harmful", "te", "n_units",
                  "n_verified", "n_random", "spearman", "precision_at_k", "topk_share", "max_abs_error"]
SUMMARY_COLUMNS = ["metric", "layer", "selection", "k", "n_pairs", "mean_share", "sd_share"]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties); NaN when either side is constant or n < 3."""
    if len(a) < 3:
        return float("nan")
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k_units(values: pd.Series, k: int) -> set[int]:
    """Index labels of the k largest |values|, ties by label (as the screen chooses)."""
    frame = pd.DataFrame({"score": -values.abs().to_numpy(), "unit": values.index.to_numpy()})
    return set(frame.sort_values(["score", "unit"], kind="mergesort")["unit"].iloc[:k].tolist())


def layer_quality(group: pd.DataFrame, k: int, final: bool) -> dict:
    """The screen against the exact NIE in one (pair, metric, positions, layer).

    ``topk_share``: |exact| summed over the screen's top-K, over the layer's total |exact|.
    At the final layer the total is measured; elsewhere the units outside every verified set
    are represented by the random sample, scaled up to their number (an unbiased estimate).
    ``precision_at_k`` (final layer only): overlap of the screen's and the exact top-K, / K.
    """
    units = group.set_index("unit")
    verified = units[units["verified"] != ""]
    top = top_k_units(units["estimate"], k)
    exact_abs = verified["exact"].abs()
    top_abs = exact_abs[exact_abs.index.isin(top)].sum()
    random = verified[verified["verified"] == "random"]
    outside = len(units) - len(verified)
    if final:
        total = exact_abs.sum()
    else:
        total = exact_abs.sum() + (outside / len(random) * random["exact"].abs().sum() if len(random) else np.nan)
    precision = (len(top & top_k_units(verified["exact"], k)) / k) if final else np.nan
    return {
        "n_units": len(units), "n_verified": len(verified), "n_random": len(random),
        "spearman": spearman(verified["estimate"].to_numpy(), verified["exact"].to_numpy()),
        "precision_at_k": precision, "topk_share": top_abs / total if total > 0 else np.nan,
        "max_abs_error": float((verified["estimate"] - verified["exact"]).abs().max()),
    }


def layer_report(screen: pd.DataFrame, outcomes: pd.DataFrame, k: int, n_layers: int) -> pd.DataFrame:
    """One row per (pair, metric, positions, layer) in REPORT_COLUMNS; the quality columns are
    empty where nothing was verified. ``outcomes`` gives each (pair_id, metric) its clean
    y_benign and y_harmful, so the report also carries every screened pair's TE."""
    rows = []
    for (pair_id, metric, positions, layer), group in screen.groupby(
            ["pair_id", "metric", "positions", "layer"], sort=False):
        checked = (group["verified"] != "").any()
        quality = layer_quality(group, k, layer == n_layers - 1) if checked else {
            "n_units": len(group), "n_verified": 0, "n_random": 0}
        rows.append({"pair_id": pair_id, "metric": metric, "positions": positions, "layer": layer, **quality})
    report = pd.DataFrame(rows, columns=[c for c in REPORT_COLUMNS if c not in ("y_benign", "y_harmful", "te")])
    report = report.merge(outcomes[["pair_id", "metric", "y_benign", "y_harmful"]], on=["pair_id", "metric"],
                          how="left", validate="many_to_one")
    report["te"] = report["y_harmful"] - report["y_benign"]
    return report[REPORT_COLUMNS]


def read_screen(path: str | Path) -> pd.DataFrame:
    """screen.csv with ``exact`` as floats (NaN where not verified) and ``verified`` as text."""
    screen = read_table(path, ("pair_id", "positions", "verified"))
    screen["exact"] = pd.to_numeric(screen["exact"].replace("", np.nan))
    return screen


def pair_outcomes(report: pd.DataFrame) -> pd.DataFrame:
    """(pair_id, metric, y_benign, y_harmful) of every screened pair, from the report."""
    return report.drop_duplicates(["pair_id", "metric"])[["pair_id", "metric", "y_benign", "y_harmful"]]


def heldout_summary(heldout: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over held-out pairs of the TE share of each (metric, layer, selection, k);
    random draws are pooled. Pairs whose |TE| is too small carry no share and are left out."""
    share = pd.to_numeric(heldout["share"].replace("", np.nan))
    valid = heldout.assign(share=share)[np.isfinite(share)]
    grouped = valid.groupby(["metric", "layer", "selection", "k"], sort=True)
    out = grouped.agg(n_pairs=("pair_id", "nunique"), mean_share=("share", "mean"),
                      sd_share=("share", lambda s: float(np.std(s, ddof=1)) if len(s) > 1 else np.nan))
    return out.reset_index()[SUMMARY_COLUMNS]


def adjacency_table(heldout: pd.DataFrame, block_size: int) -> pd.DataFrame:
    """Per (metric, layer): held-out TE share of the screen's best contiguous block of B units
    and of its best B units anywhere, and their difference (the cost of assuming adjacency)."""
    summary = heldout_summary(heldout)
    chosen = summary[(summary["k"] == block_size) & summary["selection"].isin(["block", "top", "random"])]
    wide = chosen.pivot_table(index=["metric", "layer"], columns="selection", values="mean_share").reset_index()
    for name in ("block", "top", "random"):
        if name not in wide:
            wide[name] = np.nan
    wide["top_minus_block"] = wide["top"] - wide["block"]
    return wide[["metric", "layer", "block", "top", "random", "top_minus_block"]]
