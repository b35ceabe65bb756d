"""The per-model claims table: statistics that can come out either way, with a bootstrap CI.

Every C1-C3 statistic is a mean over held-out pairs of a per-pair quantity in units of that
pair's TE, so a model's scale and sign never enter a verdict. What each one measures (ours;
the paper's formulas are not public):

- Bands: the early band is layers 1 .. ceil(n/3) - 1 (layer 0 is left out: its MLP acts as an
  extended embedding and carries nearly the whole effect at all positions in every model); the
  late band is layers ceil(2n/3) .. n - 1 (the last third).
- C1 (late layers): on the discovery split, the module window (attn or mlp, any configured
  width, every layer inside the band) with the largest mean NIE / TE is chosen in each band;
  on held-out pairs the statistic is (NIE(best late window) - NIE(best early window)) / TE.
  This reads where patching a band's *computation* reproduces the effect, not where the signal
  arrives at the response positions: when an early MLP computes the decision and late
  attention only routes it, the early window is sufficient on its own and a late window can at
  best route part of it, so the difference is <= 0.
- C2 (MLP over attention): on the layers of C1's late window (where the late effect is
  computed, chosen on discovery), (NIE(their mlp outputs) - NIE(their attn outputs)) / TE, each
  type patched jointly: a difference of TE-normalised effects. Not the whole late band: modules
  downstream of the computing ones carry its result too (late MLPs compute on what planted late
  attention wrote), which pulls a whole-band difference towards 0.
- C3 (sparse final-layer gate): k = ceil(claims.top_fraction x d_mlp) final-layer units, ranked
  on the discovery split. Per pair, share(S) = effect of patching unit set S / TE, and the
  statistic is min(share(top k), share(whole final MLP)) - mean share(random k). Counting the
  top k only up to what the whole layer carries is what makes units that cancel across the layer
  (a top-k set that "overshoots" the layer's own effect) fail. Two rows: sufficiency (NIE:
  harmful values patched into the benign run) and necessity (the share of the TE that
  disappears when the units are held at their benign values in the harmful run).
- Behaviour present: the held-out mean TE (all pairs) with its CI above
  claims.thresholds.behaviour_min_te[metric]. When it is not, that metric's C1-C3 rows read
  `not applicable (no behaviour)`.
- Pairs with |TE| < effects.min_abs_te are left out of the C1-C3 means (n_excluded).
- Verdict: `supported` if ci_low > threshold, `not supported` if ci_high < threshold, else
  `inconclusive` (a bound equal to the threshold, or a missing CI, is inconclusive); `not run`
  when the stage produced no rows for the statistic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..constants import METRICS, PROBE_CI
from .effects import Bootstrap, bootstrap_ci, pair_te, te_shares
from .rates import wilson_interval

CLAIMS_FLOAT_FORMAT = "%.6g"  # claims and calibration tables: summaries, not raw outcomes

CLAIM_COLUMNS: tuple[str, ...] = (
    "claim", "statistic", "value", "ci_low", "ci_high", "threshold", "verdict", "n_pairs", "n_excluded",
)
# Held-out claim patches (results/<model>/claim_patches.csv), one row per pair, metric and
# intervention. kind NIE: harmful values patched into the benign run, effect = y_patched -
# y_benign. kind NEC (necessity): benign values patched into the harmful run, effect =
# y_harmful - y_patched (how much of the outcome disappears).
PATCH_COLUMNS: list[str] = ["pair_id", "metric", "role", "kind", "site", "layers", "positions", "units",
                            "draw", "y_benign", "y_harmful", "y_patched", "effect"]
NOT_RUN = "not run"
NOT_APPLICABLE = "not applicable (no behaviour)"
CLAIM_TEXT: dict[str, str] = {
    "B": "the model shows the behaviour (precondition of C1-C3 per metric)",
    "C1": "harmful generation arises in the later layers",
    "C2": "it results primarily from MLP blocks rather than attention",
    "C3": "a sparse set of final-layer neurons gates it",
    "C4": "early layers build an understanding of harmfulness",
}
DEFINITIONS: tuple[str, ...] = (
    "early band = layers 1..ceil(n/3)-1 (layer 0 left out: its MLP is an extended embedding); "
    "late band = layers ceil(2n/3)..n-1",
    "every C1-C3 value is a mean over held-out pairs of a per-pair effect / TE; pairs with "
    "|TE| < effects.min_abs_te are left out (n_excluded)",
    "C1 = (NIE of the best late-band window - NIE of the best early-band window) / TE; windows "
    "(attn or mlp, every layer inside the band) are chosen on the discovery split",
    "C2 = (NIE of the mlp outputs - NIE of the attn outputs, each jointly over the layers of C1's "
    "late window) / TE",
    "C3 = min(share of the top k final-layer units, share of the whole final MLP) - mean share of "
    "random k, k = ceil(claims.top_fraction x d_mlp), ranked on discovery; sufficiency patches "
    "harmful values into the benign run, necessity holds the units at benign values in the "
    "harmful run",
    "behaviour present = held-out mean TE (every pair) with its CI above the threshold; "
    "otherwise the metric's C1-C3 rows are not applicable",
)


def verdict(ci_low: float, ci_high: float, threshold: float, above: bool = True) -> str:
    """Judge a CI against a threshold; ties and missing bounds are inconclusive.

    ``above=False`` is for statistics where a value *below* the threshold supports the claim
    (the C4 probe depth).
    """
    if not (np.isfinite(ci_low) and np.isfinite(ci_high) and np.isfinite(threshold)):
        return "inconclusive"
    if ci_low > threshold:
        return "supported" if above else "not supported"
    if ci_high < threshold:
        return "not supported" if above else "supported"
    return "inconclusive"


# ---------------------------------------------------------------- statistics on held-out rows
def row(claim: str, statistic: str, threshold: float, values: np.ndarray | None, n_excluded: int,
        boot: Bootstrap, above: bool = True) -> dict[str, Any]:
    """One table row from per-pair values (None or empty: the statistic was not run)."""
    if values is None or len(values) == 0:
        return dict(claim=claim, statistic=statistic, value=np.nan, ci_low=np.nan, ci_high=np.nan,
                    threshold=threshold, verdict=NOT_RUN, n_pairs=0, n_excluded=n_excluded)
    low, high = bootstrap_ci(np.asarray(values, dtype=float), np.mean, boot.n_boot, boot.ci, boot.seed)
    return dict(claim=claim, statistic=statistic, value=float(np.mean(values)), ci_low=low, ci_high=high,
                threshold=threshold, verdict=verdict(low, high, threshold, above), n_pairs=len(values),
                n_excluded=n_excluded)


def role_shares(patches: pd.DataFrame, metric: str, kind: str, roles: list[str], min_abs_te: float
                ) -> tuple[pd.DataFrame | None, int]:
    """Pairs x roles of effect / TE (random draws averaged), for pairs that have every role;
    and the number of pairs left out for a small |TE|."""
    rows = patches[(patches["metric"] == metric) & (patches["kind"] == kind) & patches["role"].isin(roles)]
    if rows.empty:
        return None, 0
    te = (rows["y_harmful"] - rows["y_benign"]).groupby(rows["pair_id"]).first()
    small = set(te.index[te.abs() < min_abs_te])
    shares = te_shares(rows, min_abs_te)
    wide = shares.groupby(["pair_id", "role"])["share"].mean().unstack("role").sort_index()
    if not set(roles) <= set(wide.columns):
        return None, len(small)
    return wide[roles].dropna(how="any"), len(small)


def behaviour_row(patches: pd.DataFrame, metric: str, threshold: float, boot: Bootstrap) -> dict[str, Any]:
    """Held-out mean TE (every pair) with its CI against the behaviour threshold."""
    te = pair_te(patches, metric).to_numpy(dtype=float)
    return row("B", f"behaviour_present_TE[{metric}]", threshold, te, 0, boot)


def difference_row(claim: str, name: str, patches: pd.DataFrame, metric: str, roles: tuple[str, str],
                   threshold: float, boot: Bootstrap, min_abs_te: float) -> dict[str, Any]:
    """Mean over pairs of (share of roles[0] - share of roles[1])."""
    wide, excluded = role_shares(patches, metric, "NIE", list(roles), min_abs_te)
    values = None if wide is None else (wide[roles[0]] - wide[roles[1]]).to_numpy()
    return row(claim, f"{name}[{metric}]", threshold, values, excluded, boot)


def gate_row(patches: pd.DataFrame, metric: str, kind: str, threshold: float, boot: Bootstrap,
             min_abs_te: float) -> dict[str, Any]:
    """C3: min(top-k share, whole-layer share) - mean random-k share, per pair."""
    roles = ["c3_topk", "c3_layer", "c3_random"]
    wide, excluded = role_shares(patches, metric, kind, roles, min_abs_te)
    values = None if wide is None else (
        np.minimum(wide["c3_topk"], wide["c3_layer"]) - wide["c3_random"]).to_numpy()
    name = "sufficiency" if kind == "NIE" else "necessity"
    return row("C3", f"final_layer_topk_gate_{name}[{metric}]", threshold, values, excluded, boot)


def metric_rows(patches: pd.DataFrame, metric: str, thresholds: Mapping[str, Any], boot: Bootstrap,
                min_abs_te: float) -> list[dict[str, Any]]:
    """The behaviour row and C1-C3 of one metric; C1-C3 are not applicable without behaviour."""
    present = behaviour_row(patches, metric, float(thresholds["behaviour_min_te"][metric]), boot)
    rows = [
        difference_row("C1", "late_minus_early_window_NIE_share", patches, metric, ("c1_late", "c1_early"),
                       float(thresholds["C1_late_minus_early"]), boot, min_abs_te),
        difference_row("C2", "late_window_mlp_minus_attn_NIE_share", patches, metric, ("c2_mlp", "c2_attn"),
                       float(thresholds["C2_mlp_minus_attn"]), boot, min_abs_te),
        gate_row(patches, metric, "NIE", float(thresholds["C3_gate_share"]), boot, min_abs_te),
        gate_row(patches, metric, "NEC", float(thresholds["C3_gate_share"]), boot, min_abs_te),
    ]
    if present["verdict"] not in ("supported", NOT_RUN):
        for r in rows:
            r["verdict"] = NOT_APPLICABLE
    return [present, *rows]


def compute_claims(patches: pd.DataFrame, thresholds: Mapping[str, Any], boot: Bootstrap, min_abs_te: float,
                   c4_row: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Claims table (columns CLAIM_COLUMNS): per metric the behaviour row and C1-C3, then C4."""
    rows: list[dict[str, Any]] = []
    for metric in METRICS:
        rows.extend(metric_rows(patches, metric, thresholds, boot, min_abs_te))
    if c4_row is not None:
        rows.append({"n_pairs": np.nan, "n_excluded": np.nan, **dict(c4_row)})
    table = pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))
    order = {c: i for i, c in enumerate(CLAIM_TEXT)}
    return table.sort_values("claim", key=lambda s: s.map(order), kind="mergesort").reset_index(drop=True)


# ---------------------------------------------------------------- C4 from the probe table
def relative_depth(layer: int, n_layers: int) -> float:
    """(layer + 1) / n_layers: decoder layer 0 -> 1/n, the final layer -> 1."""
    return (layer + 1) / n_layers


def first_layer(layers: np.ndarray, mask: np.ndarray) -> int | None:
    """Earliest layer where ``mask`` holds, or None."""
    hits = layers[mask]
    return int(hits.min()) if hits.size else None


def c4_row(probe_df: pd.DataFrame, n_layers: int, level: float, threshold: float,
           n_boot: int = 0, ci: float = PROBE_CI, seed: int = 0) -> dict[str, Any]:
    """C4 claim row: relative depth of the first decoder layer whose probe accuracy >= level.

    CI construction (analytic, from the per-layer Wilson intervals recomputed at level
    ``ci``): the low end is the depth of the first layer whose interval *reaches* the level
    (ci_high >= level: the earliest layer that may have reached it), the high end that of the
    first layer whose interval lies *at or above* it (ci_low >= level: the earliest layer that
    surely has); NaN when no layer qualifies. Supported when the whole CI lies below the
    threshold. ``n_boot`` and ``seed`` are accepted for a uniform claim-row signature and
    unused. No layer reaching the level gives a NaN value and ``not supported``.
    """
    real = probe_df[(probe_df["condition"] == "real") & (probe_df["layer"].astype(int) >= 0)]
    real = real[real["layer"].astype(int) < n_layers].sort_values("layer", kind="mergesort")
    layers = real["layer"].to_numpy(dtype=int)
    accuracy = real["accuracy"].to_numpy(dtype=float)
    bounds = [wilson_interval(round(a * int(n)), int(n), ci) for a, n in zip(accuracy, real["n_prompts"])]
    low = np.array([b[0] for b in bounds]) if bounds else np.empty(0)
    high = np.array([b[1] for b in bounds]) if bounds else np.empty(0)

    def depth(layer: int | None) -> float:
        return float("nan") if layer is None else relative_depth(layer, n_layers)

    value = depth(first_layer(layers, accuracy >= level))
    ci_low = depth(first_layer(layers, high >= level))
    ci_high = depth(first_layer(layers, low >= level))
    judged = "not supported" if math.isnan(value) else verdict(ci_low, ci_high, threshold, above=False)
    return dict(claim="C4", statistic=f"probe_rel_depth_acc_ge_{level:g}", value=value,
                ci_low=ci_low, ci_high=ci_high, threshold=threshold, verdict=judged)


# ---------------------------------------------------------------- rendering
VERDICT_RULE = (
    "Each row is a statistic measured on this model: a mean over held-out prompt pairs of a "
    "per-pair effect in units of that pair's total effect (TE), with a seeded percentile-bootstrap "
    "CI over pairs. `supported` when the whole CI lies above the threshold (ci_low > threshold), "
    "`not supported` when it lies below, `inconclusive` when it touches or crosses it. A metric "
    "whose held-out TE does not clearly exceed its behaviour threshold gets `not applicable (no "
    "behaviour)` for C1-C3. `not run` marks a statistic without data. The C4 probe depth is "
    "supported by a value *below* its threshold. The column `calibrated` says whether the "
    "statistic gave the verdict its ground truth implies on every planted model that has one "
    "(results/calibration.csv); an uncalibrated statistic is not evidence either way."
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


def write_claims_csv(df: pd.DataFrame, path: str | Path) -> None:
    """The claims table through the one table writer, rounded to %.6g (blank for missing)."""
    from ..io.storage import write_table

    write_table(df, CLAIM_COLUMNS, path, float_format=CLAIMS_FLOAT_FORMAT)


def read_claims(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])
