"""The per-model claims table: statistics that can come out either way, with a bootstrap CI.

Every C1-C3 statistic is in units of the TE, so a model's scale and sign never enter a verdict:
the band statistics (C1, C2) pool over held-out pairs (per-pair shares weighted by |TE|:
sum of effects / sum of |TE|), C3 averages per-pair shares. The paper's formulas are not
public; ours, and why, are in docs/claims-and-calibration.md. In short:

- Bands: early = layers 1 .. ceil(n/3) - 1 (layer 0 is left out: its MLP acts as an extended
  embedding), mid = ceil(n/3) .. ceil(2n/3) - 1, late = ceil(2n/3) .. n - 1 (the last third).
- Depth profile: a band's necessity is the share of the TE removed when its attention outputs,
  MLP outputs, or both, are held at their benign values at every position of the harmful run.
- C1-route (does harmful generation pass through the late layers?): the late band's necessity
  (both types). A decision that reaches the logits through the residual stream around the late
  layers reads low; one relayed by them reads high wherever it was computed.
- C1-origin (is the decision computed late?): late necessity - max(early, mid necessity),
  supported above a margin. Holding any band cuts a chain that runs through it, so every band is
  necessary to some degree, and a relay can be as necessary as the computation it carries; the
  computation is in the first band whose holding removes nearly all (within the margin) of the
  largest share.
- C2-route (which type carries the late route?): the late band's MLP-only necessity - its
  attention-only necessity, each type held at every position. Comparing the types on one window
  of the late band, chosen on discovery by its NIE, read the wrong type on three of the
  calibration grid's six late plants (docs/calibration-grid.md): a window's NIE counts what its
  attention relays from the trained MLPs, and a window chosen on discovery pairs can hold none of
  the trained layers.
- C2-origin: in the origin band (the earliest band whose discovery necessity is within the
  C1-origin margin of the largest, chosen on the ``select_`` rows), MLP-only necessity -
  attention-only necessity: which type computed it. Each type is held at the request positions
  when the band does most of its work there, else at every position (:func:`origin_positions`):
  held at every position, attention that carries the band's result to the answer positions
  reads as necessary as the MLPs that computed it.
- C3 (sparse final-layer gate): k = ceil(claims.top_fraction x d_mlp) final-layer units, ranked
  on the discovery split. Per pair, share(S) = effect of patching unit set S / TE, and the
  statistic is min(share(top k), share(whole final MLP)) - mean share(random k). Two rows:
  sufficiency (NIE) and necessity (NEC).
- C4 (early understanding): the relative depth of the first layer where a probe on the last
  instruction token decodes harmfulness (accuracy above chance and near the model's best, see
  :func:`c4_row`), judged against the first claims.thresholds.C4_probe_depth share of the
  layers (:func:`depth_threshold`). C4-causal counts the layers between that layer and the
  origin band's first (decodable before the decision is made supports it).
- Behaviour present: the held-out mean TE (all pairs) with its CI above
  claims.thresholds.behaviour_min_te[metric]. When it is not, that metric's C1-C3 rows and its
  C4-causal row read `not applicable (no behaviour)`.
- Pairs with |TE| < effects.min_abs_te are left out of the C1-C3 statistics (n_excluded).
- Verdict: `supported` if ci_low > threshold, `not supported` if ci_high < threshold, else
  `inconclusive` (a bound equal to the threshold, or a missing CI, is inconclusive); `not run`
  when the stage produced no rows for the statistic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..constants import METRICS, PROBE_CI, UNDERSTANDING_POSITION, metrics_in
from .effects import Bootstrap, bootstrap_ci, pair_te, paired_statistic, te_shares
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
CAUSAL_LEAD_THRESHOLD = 0.5  # C4 causal: decodable at least one whole layer before the origin band
NOT_APPLICABLE = "not applicable (no behaviour)"
SELECT_PREFIX = "select_"  # claim_patches rows of the discovery depth profile (they choose the origin band)
BANDS: tuple[str, ...] = ("early", "mid", "late")
CLAIM_TEXT: dict[str, str] = {
    "B": "the model shows the behaviour (precondition of C1-C3 per metric)",
    "C1-route": "harmful generation passes through the later layers",
    "C1-origin": "the harmful/benign decision is computed in the later layers (not upstream and relayed)",
    "C2-route": "the late route is carried by MLP blocks rather than attention",
    "C2-origin": "the decision is computed by MLP blocks rather than attention",
    "C3": "a sparse set of final-layer neurons gates it",
    "C4": "early layers build an understanding of harmfulness",
    "C4-causal": "the prompt is understood before the decision is made",
}
DEFINITIONS: tuple[str, ...] = (
    "bands: early = layers 1..ceil(n/3)-1 (layer 0 left out: its MLP is an extended embedding), "
    "mid = ceil(n/3)..ceil(2n/3)-1, late = ceil(2n/3)..n-1",
    "C1 and C2 values pool over held-out pairs (per-pair shares weighted by |TE|); C3 values are means "
    "over pairs of effect / TE; pairs with |TE| < effects.min_abs_te are left out (n_excluded)",
    "necessity of a band = share of the TE removed when its attention and/or MLP outputs are held "
    "at their benign values at every position of the harmful run",
    "C1-route = necessity of the late band (attention and MLP)",
    "C1-origin = late-band necessity - max(early, mid) necessity, supported above C1_origin_margin",
    "C2-route = MLP-only - attention-only necessity of the late band, each type held at every position",
    "C2-origin = MLP-only - attention-only necessity in the origin band (the earliest band whose "
    "necessity on the discovery pairs is within C1_origin_margin of the largest), each type held at "
    "the request positions if one type held there removes at least C2_origin_request_share of the TE "
    "on the discovery pairs, else at every position",
    "C3 = min(share of the top k final-layer units, share of the whole final MLP) - mean share of "
    "random k, k = ceil(claims.top_fraction x d_mlp), ranked on discovery; sufficiency patches "
    "harmful values into the benign run, necessity holds the units at benign values in the "
    "harmful run",
    "C4 probe = relative depth of the first layer where a probe on the last instruction token "
    "decodes harmfulness (accuracy >= probe.relative_level x the best layer's, Wilson low bound "
    "above chance), against a threshold halfway between the last layer inside the first "
    "C4_probe_depth share of the layers and the next; C4 causal = first layer of the origin band - that layer",
    "behaviour present = held-out mean TE (every pair) with its CI above the threshold; "
    "otherwise the metric's C1-C3 and C4-causal rows are not applicable",
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


def band_effects(patches: pd.DataFrame, metric: str, roles: list[str], min_abs_te: float
                 ) -> tuple[np.ndarray | None, int]:
    """Pairs x (each role's NEC effect, the pair's TE), for pairs with |TE| >= min_abs_te that
    have every role, each row signed so that its TE is positive (a pair whose harmful prompt
    scores below its benign one counts with its own direction); and the number of pairs left
    out for a small |TE|."""
    rows = patches[(patches["metric"] == metric) & (patches["kind"] == "NEC") & patches["role"].isin(roles)]
    if rows.empty:
        return None, 0
    te = (rows["y_harmful"] - rows["y_benign"]).groupby(rows["pair_id"]).first()
    small = (te.abs() < min_abs_te) | (te == 0)  # a pair without an effect has no share of it
    effect = rows.groupby(["pair_id", "role"])["effect"].mean().unstack("role")
    if not set(roles) <= set(effect.columns):
        return None, int(small.sum())
    kept = te.index[~small]
    table = effect.reindex(kept)[roles].assign(te=te.reindex(kept)).dropna(how="any").sort_index()
    matrix = table.to_numpy(dtype=float)
    return matrix * np.sign(matrix[:, -1:]), int(small.sum())


def pooled_row(claim: str, statistic: str, threshold: float, matrix: np.ndarray | None, combine,
               n_excluded: int, boot: Bootstrap) -> dict[str, Any]:
    """One row from a pairs x (effects..., |TE|) matrix: ``combine`` of the effects' pooled shares
    (sum of effects / sum of |TE|, the mean of per-pair shares weighted by |TE|), CI by resampling
    pairs. A per-pair share divides by whatever small TE a pair has, and the heavy tail that gives
    made the band statistics' CIs up to +-0.64 wide; weighting by |TE| rather than dividing sums of
    signed TEs keeps the value a share when TEs of both signs nearly cancel (a model without the
    behaviour)."""
    if matrix is None or len(matrix) == 0:
        return row(claim, statistic, threshold, None, n_excluded, boot)
    value, low, high = paired_statistic(matrix, lambda m: combine(m[..., :-1] / m[..., -1:]), boot.n_boot,
                                        boot.ci, boot.seed)
    return dict(claim=claim, statistic=statistic, value=value, ci_low=low, ci_high=high, threshold=threshold,
                verdict=verdict(low, high, threshold), n_pairs=len(matrix), n_excluded=n_excluded)


def pooled_shares(patches: pd.DataFrame, metric: str, roles: list[str], min_abs_te: float) -> np.ndarray | None:
    """Each role's pooled necessity (sum of effects / sum of |TE|) as a point value, for the
    choices made on the discovery pairs; None without rows."""
    matrix, _ = band_effects(patches, metric, roles, min_abs_te)
    return None if matrix is None or len(matrix) == 0 else matrix[:, :-1].sum(axis=0) / matrix[:, -1].sum()


def origin_band(selection: pd.DataFrame, metric: str, min_abs_te: float, margin: float) -> str | None:
    """The earliest band whose pooled necessity (both types) on the discovery pairs (``select_``
    rows) is within ``margin`` of the largest. A relay downstream of the computation can be as
    necessary as the computation itself (holding either cuts the chain), but the computation
    cannot lie downstream of the first band whose holding removes nearly all of the TE. None
    without rows."""
    shares = pooled_shares(selection, metric, [f"{SELECT_PREFIX}band_{band}_both" for band in BANDS], min_abs_te)
    return None if shares is None else BANDS[int(np.flatnonzero(shares >= shares.max() - margin)[0])]


def route_row(patches: pd.DataFrame, metric: str, threshold: float, boot: Bootstrap, min_abs_te: float
              ) -> dict[str, Any]:
    """C1-route: the late band's pooled necessity (attention and MLP held together)."""
    matrix, excluded = band_effects(patches, metric, ["band_late_both"], min_abs_te)
    return pooled_row("C1-route", f"late_band_necessity_share[{metric}]", threshold, matrix,
                      lambda s: s[..., 0], excluded, boot)


def origin_row(patches: pd.DataFrame, metric: str, threshold: float, boot: Bootstrap, min_abs_te: float
               ) -> dict[str, Any]:
    """C1-origin: the late band's pooled necessity minus the larger of the early and mid bands'.
    On the same pairs' point values it is above the margin exactly when the late band is the
    origin band (:func:`origin_band`); the band is chosen on the discovery pairs and this row is
    judged on held-out pairs with a CI, so the two can differ when the late band leads by about
    the margin."""
    matrix, excluded = band_effects(patches, metric, [f"band_{band}_both" for band in BANDS], min_abs_te)
    return pooled_row("C1-origin", f"late_minus_max_earlier_band_necessity_share[{metric}]", threshold, matrix,
                      lambda s: s[..., 2] - np.maximum(s[..., 0], s[..., 1]), excluded, boot)


def origin_positions(selection: pd.DataFrame, metric: str, band: str, min_abs_te: float, request_share: float
                     ) -> str:
    """Where C2-origin compares the types in the origin band: at the request positions when one
    type held there alone removes at least ``request_share`` of the TE on the discovery pairs,
    else at every position. Information only flows from the request tokens to the later ones, so
    a band that does that much on the request tokens forms the decision there, and its attention
    at the later positions may only carry it: held at every position, a mid-depth MLP plant's
    attention removes more than its MLPs. Without request rows (prompts of different lengths):
    every position."""
    roles = [f"{SELECT_PREFIX}band_{band}_{site}_request" for site in ("attn", "mlp")]
    shares = pooled_shares(selection, metric, roles, min_abs_te)
    return "request" if shares is not None and shares.max() >= request_share else "all"


def type_origin_row(patches: pd.DataFrame, selection: pd.DataFrame, metric: str, band: str | None,
                    thresholds: Mapping[str, Any], boot: Bootstrap, min_abs_te: float) -> dict[str, Any]:
    """C2-origin: in the origin band, at the positions :func:`origin_positions` chooses on the
    discovery pairs, MLP-only minus attention-only pooled necessity on the held-out pairs."""
    statistic = f"origin_band_mlp_minus_attn_necessity_share[{metric}]"
    threshold = float(thresholds["C2_origin_mlp_minus_attn"])
    if band is None:
        return row("C2-origin", statistic, threshold, None, 0, boot)
    where = origin_positions(selection, metric, band, min_abs_te, float(thresholds["C2_origin_request_share"]))
    return type_difference_row("C2-origin", statistic, threshold, patches, metric, band,
                               "_request" if where == "request" else "", boot, min_abs_te)


def type_route_row(patches: pd.DataFrame, metric: str, threshold: float, boot: Bootstrap, min_abs_te: float
                   ) -> dict[str, Any]:
    """C2-route: the late band's MLP-only minus attention-only pooled necessity, every position."""
    return type_difference_row("C2-route", f"late_band_mlp_minus_attn_necessity_share[{metric}]", threshold,
                               patches, metric, "late", "", boot, min_abs_te)


def type_difference_row(claim: str, statistic: str, threshold: float, patches: pd.DataFrame, metric: str,
                        band: str, suffix: str, boot: Bootstrap, min_abs_te: float) -> dict[str, Any]:
    """MLP-only minus attention-only pooled necessity of ``band`` (roles ``band_<band>_<type><suffix>``)."""
    matrix, excluded = band_effects(patches, metric, [f"band_{band}_mlp{suffix}", f"band_{band}_attn{suffix}"],
                                    min_abs_te)
    return pooled_row(claim, statistic, threshold, matrix, lambda s: s[..., 0] - s[..., 1], excluded, boot)


def gate_row(patches: pd.DataFrame, metric: str, kind: str, threshold: float, boot: Bootstrap,
             min_abs_te: float) -> dict[str, Any]:
    """C3: min(top-k share, whole-layer share) - mean random-k share, per pair."""
    roles = ["c3_topk", "c3_layer", "c3_random"]
    wide, excluded = role_shares(patches, metric, kind, roles, min_abs_te)
    values = None if wide is None else (
        np.minimum(wide["c3_topk"], wide["c3_layer"]) - wide["c3_random"]).to_numpy()
    name = "sufficiency" if kind == "NIE" else "necessity"
    return row("C3", f"final_layer_topk_gate_{name}[{metric}]", threshold, values, excluded, boot)


def metric_rows(patches: pd.DataFrame, selection: pd.DataFrame, metric: str, thresholds: Mapping[str, Any],
                boot: Bootstrap, min_abs_te: float, probe: ProbeDepth | None = None) -> list[dict[str, Any]]:
    """The behaviour row, C1-C3 and C4-causal of one metric (held-out ``patches``; ``selection``:
    the discovery profile). Without behaviour they are not applicable."""
    present = behaviour_row(patches, metric, float(thresholds["behaviour_min_te"][metric]), boot)
    margin = float(thresholds["C1_origin_margin"])
    band = origin_band(selection, metric, min_abs_te, margin)
    rows = [
        route_row(patches, metric, float(thresholds["C1_route_share"]), boot, min_abs_te),
        origin_row(patches, metric, margin, boot, min_abs_te),
        type_route_row(patches, metric, float(thresholds["C2_route_mlp_minus_attn"]), boot, min_abs_te),
        type_origin_row(patches, selection, metric, band, thresholds, boot, min_abs_te),
        gate_row(patches, metric, "NIE", float(thresholds["C3_gate_share"]), boot, min_abs_te),
        gate_row(patches, metric, "NEC", float(thresholds["C3_gate_share"]), boot, min_abs_te),
    ]
    if probe is not None:
        rows.append(c4_causal_row(probe, band, metric, patches))
    if present["verdict"] not in ("supported", NOT_RUN):
        for r in rows:
            r["verdict"] = NOT_APPLICABLE
    return [present, *rows]


def compute_claims(patches: pd.DataFrame, thresholds: Mapping[str, Any], boot: Bootstrap, min_abs_te: float,
                   probe: ProbeDepth | None = None) -> pd.DataFrame:
    """Claims table (columns CLAIM_COLUMNS): per metric the behaviour row, C1-C3 and C4-causal,
    then the C4 probe row. ``patches`` holds the held-out rows and the discovery profile's
    ``select_`` rows; only the latter choose the origin band."""
    chosen = patches["role"].astype(str).str.startswith(SELECT_PREFIX)
    held_out, selection = patches[~chosen], patches[chosen]
    rows: list[dict[str, Any]] = []
    for metric in metrics_in(held_out) or METRICS:  # no rows at all: every metric "not run"
        rows.extend(metric_rows(held_out, selection, metric, thresholds, boot, min_abs_te, probe))
    if probe is not None:
        rows.append(probe.row)
    table = pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))
    order = {c: i for i, c in enumerate(CLAIM_TEXT)}
    return table.sort_values("claim", key=lambda s: s.map(order), kind="mergesort").reset_index(drop=True)


# ---------------------------------------------------------------- C4 from the probe table
def relative_depth(layer: int, n_layers: int) -> float:
    """(layer + 1) / n_layers: decoder layer 0 -> 1/n, the final layer -> 1."""
    return (layer + 1) / n_layers


def depth_threshold(share: float, n_layers: int) -> float:
    """The depth threshold that means "within the first ``share`` of the layers": halfway between
    the depth of the last layer inside that share and the next layer's. Depths are
    (layer + 1) / n_layers, so a threshold of exactly ``share`` would coincide with a layer's
    depth whenever share x n_layers is whole (0.5 of 30 layers: layer 14 sits at 0.5), and that
    layer would count neither as inside the share nor outside it. Like C4-causal's 0.5 between
    whole layer counts, the threshold sits where no value can."""
    inside = math.floor(share * n_layers + 1e-9)
    return (inside + 0.5) / n_layers


def first_layer(layers: np.ndarray, mask: np.ndarray) -> int | None:
    """Earliest layer where ``mask`` holds, or None."""
    hits = layers[mask]
    return int(hits.min()) if hits.size else None


@dataclass(frozen=True)
class ProbeDepth:
    """Where harmfulness first becomes decodable at the probed position: the first layer (point)
    and the CI's ends in layers (``earliest``: the first layer that may have reached it,
    ``surest``: the first that surely has; None: no such layer), and the C4 probe row."""

    layer: int | None
    earliest: int | None
    surest: int | None
    row: dict[str, Any]


def c4_row(probe_df: pd.DataFrame, n_layers: int, relative_level: float, threshold: float,
           position: str = UNDERSTANDING_POSITION, ci: float = PROBE_CI) -> ProbeDepth:
    """C4 probe row: relative depth of the first decoder layer where harmfulness is decodable at
    ``position``: accuracy at least ``relative_level`` x the best layer's there, and the Wilson
    interval's low end above chance (0.5). Relative to the model's own best, so a model whose
    probe never reaches a fixed accuracy can still be judged; above chance, so a flat profile
    never counts as decodable.

    CI (analytic, from the per-layer Wilson intervals at level ``ci``): the low end is the depth
    of the first layer whose interval reaches the level (the earliest layer that may have), the
    high end that of the first layer whose interval lies above both the level and chance (the
    earliest that surely has); NaN when no layer qualifies. Supported when the whole CI lies
    below the threshold; no decodable layer gives a NaN value and `not supported`.

    ``threshold`` is a share of the model's layers; the row is judged at :func:`depth_threshold`.
    """
    real = probe_df[(probe_df["condition"] == "real") & (probe_df["position"] == position)]
    real = real[real["layer"].astype(int).between(0, n_layers - 1)].sort_values("layer", kind="mergesort")
    layers = real["layer"].to_numpy(dtype=int)
    accuracy = real["accuracy"].to_numpy(dtype=float)
    bounds = [wilson_interval(round(a * int(n)), int(n), ci) for a, n in zip(accuracy, real["n_prompts"])]
    low = np.array([b[0] for b in bounds]) if bounds else np.empty(0)
    high = np.array([b[1] for b in bounds]) if bounds else np.empty(0)
    level = relative_level * float(accuracy.max()) if accuracy.size else float("nan")
    point = first_layer(layers, (accuracy >= level) & (low > 0.5))
    earliest = first_layer(layers, (high >= level) & (high > 0.5))
    surest = first_layer(layers, (low >= level) & (low > 0.5))

    def depth(layer: int | None) -> float:
        return float("nan") if layer is None else relative_depth(layer, n_layers)

    value, ci_low, ci_high = depth(point), depth(earliest), depth(surest)
    boundary = depth_threshold(threshold, n_layers)
    judged = "not supported" if math.isnan(value) else verdict(ci_low, ci_high, boundary, above=False)
    row = dict(claim="C4", statistic=f"probe_rel_depth_decodable_at_{position}_token", value=value, ci_low=ci_low,
               ci_high=ci_high, threshold=boundary, verdict=judged, n_pairs=int(real["n_prompts"].max()) // 2
               if len(real) else 0, n_excluded=0)
    return ProbeDepth(point, earliest, surest, row)


def c4_causal_row(probe: ProbeDepth, band: str | None, metric: str, patches: pd.DataFrame) -> dict[str, Any]:
    """C4 causal row: layers between the first layer where harmfulness is decodable and the
    first layer of the origin band (:func:`origin_band`). At
    least one layer (value > 0.5) means the prompt was understood before the decision was made."""
    statistic = f"layers_decodable_before_origin_band[{metric}]"
    start = _band_start(patches, band)
    if start is None:
        return row("C4-causal", statistic, CAUSAL_LEAD_THRESHOLD, None, 0, Bootstrap(0, 0.95, 0))
    if probe.layer is None:
        return dict(claim="C4-causal", statistic=statistic, value=np.nan, ci_low=np.nan, ci_high=np.nan,
                    threshold=CAUSAL_LEAD_THRESHOLD, verdict="not supported", n_pairs=probe.row["n_pairs"],
                    n_excluded=0)
    lead = float(start - probe.layer)
    ci_low = float(start - probe.surest) if probe.surest is not None else -math.inf
    ci_high = float(start - probe.earliest) if probe.earliest is not None else math.inf
    judged = verdict(ci_low, ci_high, CAUSAL_LEAD_THRESHOLD) if math.isfinite(ci_low) else (
        "not supported" if ci_high < CAUSAL_LEAD_THRESHOLD else "inconclusive")
    return dict(claim="C4-causal", statistic=statistic, value=lead, ci_low=ci_low if math.isfinite(ci_low) else np.nan,
                ci_high=ci_high, threshold=CAUSAL_LEAD_THRESHOLD, verdict=judged,
                n_pairs=probe.row["n_pairs"], n_excluded=0)


def _band_start(patches: pd.DataFrame, band: str | None) -> int | None:
    """First layer of ``band`` as its held-out profile rows recorded it (``layers`` = 'a:b')."""
    if band is None:
        return None
    rows = patches[patches["role"] == f"band_{band}_both"]
    return None if rows.empty else int(str(rows["layers"].iloc[0]).split(":")[0])


def write_claims_csv(df: pd.DataFrame, path: str | Path) -> None:
    """The claims table through the one table writer, rounded to %.6g (blank for missing)."""
    from ..io.storage import write_table

    write_table(df, CLAIM_COLUMNS, path, float_format=CLAIMS_FLOAT_FORMAT)


def read_claims(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])
