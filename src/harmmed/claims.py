"""The per-model claims table: one statistic per claim and metric, a bootstrap CI and a verdict.

Definitions (ours; the paper's formulas are not public):

- Layers are the decoder blocks 0..n-1; the embeddings (layer -1) never enter a claim.
- Last third: layers l >= ceil(2n/3), so it never holds more than n/3 layers.
  Late half: layers l >= ceil(n/2); early half: 0 <= l < ceil(n/2).
- Orientation: effects are multiplied by the sign of the metric's mean TE (full sample), so
  "positive" means "in the direction of the total effect" whichever way a metric moves. The
  ratio statistics are unchanged by this; the share and the argmax depend on it.
- CIs resample pairs once for all layers and sites of a statistic (paired bootstrap).
- Argmax ties go to the earliest layer (numpy's argmax).
- Verdict: `supported` if ci_low > threshold, `not supported` if ci_high < threshold, else
  `inconclusive`; a CI bound equal to the threshold, or a missing CI, is `inconclusive`.
  A statistic without data is `not run`. Rows passed in later whose claim is supported by a
  value below the threshold carry `verdict(..., above=False)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harmmed.constants import METRICS
from harmmed.effects import pair_matrix, pair_te, paired_statistic

CLAIM_COLUMNS: tuple[str, ...] = (
    "claim",
    "statistic",
    "value",
    "ci_low",
    "ci_high",
    "threshold",
    "verdict",
)
ARGMAX_DEPTH_THRESHOLD = 2.0 / 3.0
CLAIM_TEXT: dict[str, str] = {
    "C1": "harmful generation arises in the later layers",
    "C2": "it results primarily from MLP blocks rather than attention",
    "C3": "a sparse set of final-layer neurons gates it",
    "C4": "early layers build an understanding of harmfulness",
}
NOT_RUN = "not run"
VERDICT_RULE = (
    "Each row is a statistic measured on this model, with a seeded percentile-bootstrap CI over "
    "prompt pairs (pairs are resampled once for all layers and sites entering a statistic). "
    "The verdict compares the CI with the threshold from the config: `supported` when the whole "
    "CI lies above the threshold (ci_low > threshold), `not supported` when it lies below "
    "(ci_high < threshold), and `inconclusive` when the CI touches or crosses it (a bound equal "
    "to the threshold counts as crossing). `not run` marks a statistic whose stage produced no "
    "data. A row whose claim is supported by a value *below* its threshold (a C3 sparsity "
    "fraction) is judged the mirror way. The paper publishes no numbers, so the values are our "
    "measurements, not matches."
)
DEFINITIONS: tuple[str, ...] = (
    "layers are the decoder blocks 0..n-1 (the embeddings never enter a claim); the last third "
    "is l >= ceil(2n/3), the late half l >= ceil(n/2), the early half 0 <= l < ceil(n/2)",
    "effects are oriented by the sign of the metric's mean TE, so positive means along the TE",
    "share = sum over the last third of max(mean NIE, 0) / the same sum over all layers "
    "(residual, post-instruction positions); argmax depth = argmax layer / (n - 1)",
    "ratio = late-half sum of mean mlp NIE / the same sum for attn (single layer, all positions)",
    "severed = drop_mlp - drop_attn, drop_X = 1 - early-half sum of residual NIE with every "
    "later X output frozen at its benign value / the same sum without freezing",
)


def late_third_start(n_layers: int) -> int:
    """First layer of the last third: ceil(2n/3), so the last third holds at most n/3 layers."""
    return math.ceil(2 * n_layers / 3)


def late_half_start(n_layers: int) -> int:
    """First layer of the late half: ceil(n/2)."""
    return math.ceil(n_layers / 2)


def verdict(ci_low: float, ci_high: float, threshold: float, above: bool = True) -> str:
    """Judge a CI against a threshold; ties and missing bounds are inconclusive.

    `above=False` is for statistics where a value *below* the threshold supports the claim
    (e.g. a C3 "smallest fraction of neurons" row); every C1/C2 row uses `above=True`.
    """
    if not (np.isfinite(ci_low) and np.isfinite(ci_high) and np.isfinite(threshold)):
        return "inconclusive"
    if ci_low > threshold:
        return "supported" if above else "not supported"
    if ci_high < threshold:
        return "not supported" if above else "supported"
    return "inconclusive"


def claim_row(
    claim: str,
    statistic: str,
    threshold: float,
    estimate: tuple[float, float, float] | None,
) -> dict[str, Any]:
    """One table row; `estimate` is (value, ci_low, ci_high) or None when there was no data."""
    if estimate is None:
        return dict(claim=claim, statistic=statistic, value=np.nan, ci_low=np.nan,
                    ci_high=np.nan, threshold=threshold, verdict=NOT_RUN)
    value, low, high = estimate
    return dict(claim=claim, statistic=statistic, value=value, ci_low=low, ci_high=high,
                threshold=threshold, verdict=verdict(low, high, threshold))


def orientation(df: pd.DataFrame, metric: str) -> float:
    """Sign of the metric's mean TE (+1 when zero or unknown), so effects point along the TE."""
    te = pair_te(df, metric)
    return -1.0 if len(te) and te.mean() < 0 else 1.0


def decoder_layers(matrix: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Keep decoder-block columns 0..n-1 (drops the embeddings, layer -1)."""
    cols = [c for c in matrix.columns if 0 <= int(c) < n_layers]
    return matrix[cols]


def _estimate(
    matrix: pd.DataFrame,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_boot: int,
    ci: float,
    seed: int,
) -> tuple[float, float, float] | None:
    """Paired-bootstrap estimate, or None when the matrix has no complete pair."""
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        return None
    return paired_statistic(matrix.to_numpy(dtype=float), statistic, n_boot, ci, seed)


def residual_post_nie(layer_df: pd.DataFrame, metric: str, n_layers: int) -> pd.DataFrame:
    """Oriented residual NIE at the post-instruction positions, pairs x decoder layers."""
    m = pair_matrix(layer_df, metric=metric, kind="NIE", site="residual", window=1,
                    positions="post")
    return decoder_layers(m, n_layers) * orientation(layer_df, metric)


def c1_rows(layer_df: pd.DataFrame, metric: str, n_layers: int, threshold: float,
            argmax_threshold: float, n_boot: int, ci: float, seed: int) -> list[dict[str, Any]]:
    """C1: share of positive residual NIE in the last third, and the argmax layer's depth."""
    m = residual_post_nie(layer_df, metric, n_layers)
    layers = np.asarray(m.columns, dtype=int)
    late = layers >= late_third_start(n_layers)

    def share(means: np.ndarray) -> np.ndarray:
        pos = np.clip(means, 0.0, None)
        with np.errstate(invalid="ignore", divide="ignore"):
            return pos[..., late].sum(axis=-1) / pos.sum(axis=-1)

    def argmax_depth(means: np.ndarray) -> np.ndarray:
        return layers[np.argmax(means, axis=-1)] / (n_layers - 1)

    return [
        claim_row("C1", f"late_third_share_pos_NIE[{metric}]", threshold,
                  _estimate(m, share, n_boot, ci, seed)),
        claim_row("C1", f"argmax_rel_depth_NIE[{metric}]", argmax_threshold,
                  _estimate(m, argmax_depth, n_boot, ci, seed)),
    ]


def _side_by_side(blocks: list[pd.DataFrame]) -> pd.DataFrame:
    """Join equally-shaped pair x layer blocks on common pairs and layers, block after block."""
    pairs = sorted(set.intersection(*(set(b.index) for b in blocks)))
    layers = sorted(set.intersection(*(set(b.columns) for b in blocks)))
    return pd.concat([b.loc[pairs, layers] for b in blocks], axis=1, ignore_index=True)


def ratio_of_block_sums(k: int, num: int, den: int) -> Callable[[np.ndarray], np.ndarray]:
    """Statistic: sum of block `num` / sum of block `den`, for k equal blocks side by side."""
    def stat(means: np.ndarray) -> np.ndarray:
        blocks = np.split(means, k, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return blocks[num].sum(axis=-1) / blocks[den].sum(axis=-1)
    return stat


def c2_ratio_row(module_df: pd.DataFrame, metric: str, n_layers: int, threshold: float,
                 n_boot: int, ci: float, seed: int) -> dict[str, Any]:
    """C2: late-half sum of mean mlp NIE / sum of mean attn NIE (window 1, all positions)."""
    blocks = [
        pair_matrix(module_df, metric=metric, kind="NIE", site=site, window=1, positions="all")
        for site in ("mlp", "attn")
    ]
    blocks = [b[[c for c in b.columns if late_half_start(n_layers) <= int(c) < n_layers]]
              for b in blocks]
    m = _side_by_side(blocks)
    return claim_row("C2", f"late_half_mlp_attn_NIE_ratio[{metric}]", threshold,
                     _estimate(m, ratio_of_block_sums(2, 0, 1), n_boot, ci, seed))


def severed_drop_difference(means: np.ndarray) -> np.ndarray:
    """drop_mlp - drop_attn from blocks [none, mlp severed, attn severed] of early-half NIE.

    drop_X = 1 - sum NIE_severedX / sum NIE_none, so the difference is
    (sum NIE_attn-severed - sum NIE_mlp-severed) / sum NIE_none.
    """
    none, mlp, attn = np.split(means, 3, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (attn.sum(axis=-1) - mlp.sum(axis=-1)) / none.sum(axis=-1)


def c2_severed_row(severed_df: pd.DataFrame | None, metric: str, n_layers: int,
                   threshold: float, n_boot: int, ci: float, seed: int) -> dict[str, Any]:
    """C2: how much more of the early-half residual NIE is lost when later MLPs are frozen."""
    name = f"severed_drop_mlp_minus_attn[{metric}]"
    if severed_df is None or severed_df.empty:
        return claim_row("C2", name, threshold, None)
    blocks = [
        pair_matrix(severed_df, metric=metric, kind="NIE", site="residual", window=1,
                    positions="all", severed=cut)
        for cut in ("none", "mlp", "attn")
    ]
    blocks = [b[[c for c in b.columns if 0 <= int(c) < late_half_start(n_layers)]]
              for b in blocks]
    m = _side_by_side(blocks)
    return claim_row("C2", name, threshold,
                     _estimate(m, severed_drop_difference, n_boot, ci, seed))


def placeholder_rows() -> list[dict[str, Any]]:
    """C3 (per metric) and C4 rows for stages that run later; `extra_rows` replaces them."""
    rows = [claim_row("C3", f"final_layer_neuron_gate[{metric}]", np.nan, None)
            for metric in METRICS]
    rows.append(claim_row("C4", "probe_rel_depth_acc_ge_0.9", np.nan, None))
    return rows


def merge_extra_rows(table: pd.DataFrame, extra_rows: pd.DataFrame | None) -> pd.DataFrame:
    """Replace every row of each claim that `extra_rows` covers.

    A missing verdict is computed with the above-threshold rule; rows judged the other way
    should carry `verdict(..., above=False)`.
    """
    if extra_rows is None or extra_rows.empty:
        return table
    extra = extra_rows.reindex(columns=list(CLAIM_COLUMNS))
    extra["verdict"] = [
        r.verdict if isinstance(r.verdict, str) else verdict(r.ci_low, r.ci_high, r.threshold)
        for r in extra.itertuples()
    ]
    kept = table[~table["claim"].isin(set(extra["claim"]))]
    merged = pd.concat([kept, extra], ignore_index=True)
    return merged.sort_values("claim", kind="mergesort").reset_index(drop=True)


def compute_claims(
    layer_df: pd.DataFrame,
    module_df: pd.DataFrame,
    severed_df: pd.DataFrame | None,
    manifest: Mapping[str, Any],
    thresholds: Mapping[str, float],
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    extra_rows: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Claims table (columns CLAIM_COLUMNS) for one model, rows ordered by claim then metric.

    `thresholds` needs C1_late_share, C2_mlp_attn_ratio and C2_severed_drop (C1_argmax_depth
    is optional, default 2/3). `extra_rows` (same columns; `verdict` may be left out) supplies
    C3/C4 results from later stages and replaces their `not run` placeholders.
    """
    n = int(manifest["n_layers"])
    args = (n_boot, ci, seed)
    argmax_threshold = float(thresholds.get("C1_argmax_depth", ARGMAX_DEPTH_THRESHOLD))
    rows: list[dict[str, Any]] = []
    for metric in METRICS:
        rows.extend(c1_rows(layer_df, metric, n, float(thresholds["C1_late_share"]),
                            argmax_threshold, *args))
    for metric in METRICS:
        rows.append(c2_ratio_row(module_df, metric, n, float(thresholds["C2_mlp_attn_ratio"]),
                                 *args))
        rows.append(c2_severed_row(severed_df, metric, n, float(thresholds["C2_severed_drop"]),
                                   *args))
    rows.extend(placeholder_rows())
    table = pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))
    return merge_extra_rows(table, extra_rows)


def _markdown_cell(value: Any) -> str:
    """Stable text for a Markdown cell: %.4g for numbers, blank for missing."""
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def claims_markdown(df: pd.DataFrame, title: str = "Claims") -> str:
    """Markdown rendering: a header paragraph with the verdict rule, then the table."""
    lines = [f"# {title}", "", VERDICT_RULE, "",
             "| " + " | ".join(CLAIM_COLUMNS) + " |",
             "| " + " | ".join("---" for _ in CLAIM_COLUMNS) + " |"]
    for row in df[list(CLAIM_COLUMNS)].itertuples(index=False):
        lines.append("| " + " | ".join(_markdown_cell(v) for v in row) + " |")
    lines += ["", "Claims:", "", *(f"- {c}: {text}" for c, text in CLAIM_TEXT.items())]
    lines += ["", "Definitions:", "", *(f"- {text}" for text in DEFINITIONS), ""]
    return "\n".join(lines)


def write_claims(df: pd.DataFrame, csv_path: str | Path, md_path: str | Path,
                 title: str = "Claims") -> None:
    """Write the claims table as CSV (%.6g floats, blank for missing) and as Markdown."""
    for path in (Path(csv_path), Path(md_path)):
        path.parent.mkdir(parents=True, exist_ok=True)
    df[list(CLAIM_COLUMNS)].to_csv(csv_path, index=False, float_format="%.6g",
                                   lineterminator="\n")
    Path(md_path).write_text(claims_markdown(df, title), encoding="utf-8")


# ---------------------------------------------------------------- C3: the final-layer gate
def _pair_bootstrap(values_by_pair: np.ndarray, statistic: Callable[[np.ndarray], float], n_boot: int,
                    ci: float, seed: int) -> tuple[float, float, float]:
    """Statistic of a (pairs x ...) array and its percentile CI over resampled pairs."""
    rng = np.random.default_rng(seed)
    n = values_by_pair.shape[0]
    boot = np.array([statistic(values_by_pair[rng.integers(0, n, n)]) for _ in range(n_boot)])
    alpha = (1 - ci) / 2
    finite = boot[np.isfinite(boot)]
    if not len(finite):
        return statistic(values_by_pair), math.nan, math.nan
    return (statistic(values_by_pair), float(np.quantile(finite, alpha)), float(np.quantile(finite, 1 - alpha)))


def sparsity_fraction(sparsity_df: pd.DataFrame, metric: str, width: int, level: float, n_boot: int, ci: float,
                      seed: int) -> tuple[float, float, float]:
    """Smallest fraction of final-layer neurons (top-k by the discovery ranking, patched
    jointly) whose mean NIE reaches ``level`` of the whole layer's mean NIE."""
    top = sparsity_df[(sparsity_df["metric"] == metric) & (sparsity_df["selection"] == "top")]
    if top.empty:
        return math.nan, math.nan, math.nan
    effects = top.pivot(index="pair_id", columns="k", values="effect").sort_index()
    layer = top.groupby("pair_id")["layer_effect"].first().sort_index().to_numpy()
    ks = effects.columns.to_numpy()
    stacked = np.column_stack([effects.to_numpy(), layer])

    def fraction(sample: np.ndarray) -> float:
        means = sample.mean(axis=0)
        total = means[-1]
        if total == 0:
            return math.nan
        reached = np.nonzero(means[:-1] / total >= level)[0]
        return float(ks[reached[0]] / width) if len(reached) else 1.0

    return _pair_bootstrap(stacked, fraction, n_boot, ci, seed)


def layer_sign(ranking_df: pd.DataFrame, metric: str) -> float:
    """Sign of the final-layer MLP NIE on the discovery split (the ranking's orientation)."""
    rows = ranking_df[(ranking_df["metric"] == metric) & (ranking_df["site"] == "neuron") & (ranking_df["mean_nie"] != 0)]
    return float(np.sign((rows["oriented_nie"] / rows["mean_nie"]).iloc[0])) if len(rows) else 1.0


def gating_statistics(gating_df: pd.DataFrame, metric: str, sign: float, n_boot: int, ci: float, seed: int
                      ) -> tuple[tuple[float, float, float], float]:
    """(top-k minus mean random-k gating effect, CI) and the one-sided permutation p-value.

    Setting the units of the harmful run to their benign values should undo their share of the
    final layer's NIE, so the effect is oriented as -(y_patched - y_harmful) * ``sign`` (the sign
    of that NIE on the discovery split): positive means "moved the way the ranking predicts".
    """
    rows = gating_df[(gating_df["metric"] == metric) & (gating_df["intervention"] == "patch_benign")]
    if rows.empty:
        return (math.nan, math.nan, math.nan), math.nan
    oriented = rows.assign(g=-sign * rows["effect"])
    top = oriented[oriented["units"] == "topk_neuron"].set_index("pair_id")["g"].sort_index()
    random = oriented[oriented["units"] == "random_neuron"].pivot(index="pair_id", columns="draw", values="g")
    random = random.loc[top.index]
    difference = (top - random.mean(axis=1)).to_numpy()[:, None]
    estimate = _pair_bootstrap(difference, lambda a: float(a.mean()), n_boot, ci, seed)
    observed = top.mean()
    null = random.mean(axis=0).to_numpy()
    p_value = float((1 + np.sum(null >= observed)) / (1 + len(null)))
    return estimate, p_value


def c3_rows(sparsity_df: pd.DataFrame | None, gating_df: pd.DataFrame | None, ranking_df: pd.DataFrame | None,
            width: int, thresholds: Mapping[str, float], n_boot: int, ci: float, seed: int) -> pd.DataFrame:
    rows = []
    for metric in METRICS:
        for level, key in ((0.5, "C3_neuron_fraction"), (0.8, "C3_neuron_fraction_80")):
            threshold = float(thresholds.get(key, thresholds["C3_neuron_fraction"]))
            name = f"final_layer_fraction_for_{int(level * 100)}pct_mlp_NIE[{metric}]"
            if sparsity_df is None or sparsity_df.empty:
                rows.append(claim_row("C3", name, threshold, None))
                continue
            value, low, high = sparsity_fraction(sparsity_df, metric, width, level, n_boot, ci, seed)
            rows.append({"claim": "C3", "statistic": name, "value": value, "ci_low": low, "ci_high": high,
                         "threshold": threshold, "verdict": verdict(low, high, threshold, above=False)})
        threshold = float(thresholds["C3_gating_effect"])
        if gating_df is None or gating_df.empty:
            rows.append(claim_row("C3", f"gating_topk_minus_random[{metric}]", threshold, None))
            continue
        sign = layer_sign(ranking_df, metric) if ranking_df is not None else 1.0
        (value, low, high), p_value = gating_statistics(gating_df, metric, sign, n_boot, ci, seed)
        rows.append({"claim": "C3", "statistic": f"gating_topk_minus_random[{metric}]", "value": value,
                     "ci_low": low, "ci_high": high, "threshold": threshold, "verdict": verdict(low, high, threshold)})
        rows.append({"claim": "C3", "statistic": f"gating_permutation_p[{metric}]", "value": p_value,
                     "ci_low": math.nan, "ci_high": math.nan, "threshold": 0.05,
                     "verdict": "supported" if p_value < 0.05 else "not supported"})
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))
