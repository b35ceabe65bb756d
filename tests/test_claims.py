"""Claim statistics on synthetic results tables with a known mechanism.

Each pattern is a mechanism written as data: the share of a pair's TE that holding each depth
band's attention and/or MLP outputs at benign values removes, and the contribution of every
final-layer unit. From it the test builds the claim patches the mediate_claims stage would
write (the discovery depth profile and the held-out rows). One statistic, unchanged, must give
each pattern its intended verdict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harmmed.analyses import selection
from harmmed.stats import claims
from harmmed.stats.claims_report import claims_markdown
from harmmed.stats.effects import Bootstrap

N_LAYERS, D_MLP = 30, 256  # the default model's depth; k = ceil(0.01 x 256) = 3 units
THRESHOLDS = {"behaviour_min_te": {"harm": 0.1, "refusal": 0.5}, "C1_route_share": 0.5, "C1_origin_margin": 0.05,
              "C2_route_mlp_minus_attn": 0.0, "C2_origin_mlp_minus_attn": 0.0, "C2_origin_request_share": 0.5,
              "C3_gate_share": 0.5}
BOOT = Bootstrap(n_boot=400, ci=0.95, seed=0)
MIN_ABS_TE = 0.1
K = selection.top_k(D_MLP, 0.01)


# Share of the TE removed by holding a band's (attention + MLP, attention only, MLP only) outputs
# at benign values. Holding any band of a chain cuts it, so bands that only relay are necessary
# too, but less than the one that computes (the residual stream routes around them in part).
QUIET = {"early": (0.15, 0.05, 0.1), "mid": (0.2, 0.1, 0.1), "late": (0.3, 0.1, 0.2)}
NECESSITY: dict[str, dict[str, tuple[float, float, float]]] = {
    "late_mlp": {**QUIET, "late": (1.0, 0.3, 0.95)},
    "late_attn": {**QUIET, "late": (1.0, 0.9, 0.3)},
    "late_attn_computed_on_by_mlps": {**QUIET, "late": (1.0, 0.95, 0.75)},
    # the wide late-MLP grid plant's shape: late attention relays so much of what the trained
    # MLPs compute that holding it alone removes 0.82 of the TE (the MLPs alone: all of it)
    "late_mlp_relayed_by_late_attn": {**QUIET, "late": (1.0, 0.82, 1.0)},
    "gate": {**QUIET, "late": (1.0, 0.2, 1.0)},
    "early_mlp_routed_late": {**QUIET, "early": (1.0, 0.3, 0.95), "mid": (0.5, 0.3, 0.2), "late": (0.8, 0.6, 0.3)},
    "early_mlp_bypass": {**QUIET, "early": (1.0, 0.2, 1.0), "late": (0.1, 0.05, 0.05)},
    # the bypass plant's shape: mid-depth attention carries the early MLPs' decision to the answer
    # position, and holding that relay removes as much as holding the computation
    "early_mlp_relayed_by_mid_attn": {**QUIET, "early": (0.97, 0.3, 0.9), "mid": (1.0, 0.98, 0.4),
                                      "late": (0.3, 0.1, 0.2)},
    # the mid-depth plants' shapes: the early band, which reads the request, is nearly as necessary
    "mid_attn": {**QUIET, "early": (0.88, 0.26, 0.66), "mid": (0.99, 0.98, 0.36), "late": (0.73, 0.27, 0.59)},
    "mid_mlp_carried_by_mid_attn": {**QUIET, "early": (0.87, 0.25, 0.61), "mid": (0.99, 0.97, 0.8),
                                    "late": (0.75, 0.37, 0.61)},
    "mid_attn_relayed_by_late_mlps": {**QUIET, "mid": (1.0, 0.98, 0.4), "late": (0.8, 0.2, 0.75)},
    "cancelling_units": QUIET,
}
TYPES = ("both", "attn", "mlp")
# Each type alone held at the request positions: (attn, mlp). By default the early band acts on
# the request tokens, the late band where the answer is read, and the mid band on both.
REQUEST: dict[str, dict[str, tuple[float, float]]] = {
    # held at every position the mid band's attention outweighs its MLPs (it carries their
    # result to the answer positions); on the request tokens the MLPs lead
    "mid_mlp_carried_by_mid_attn": {"mid": (0.39, 0.66)},
    "mid_attn": {"mid": (0.66, 0.23)},
}


def request_shares(pattern: str, band: str) -> tuple[float, float]:
    _, attn, mlp = NECESSITY[pattern][band]
    default = {"early": (attn, mlp), "mid": (0.4 * attn, 0.4 * mlp), "late": (0.05, 0.05)}[band]
    return REQUEST.get(pattern, {}).get(band, default)


BAND_LAYERS = {name: f"{band[0]}:{band[-1] + 1}" for name, band in selection.origin_bands(N_LAYERS).items()}


def unit_contributions(pattern: str, rng: np.random.Generator) -> np.ndarray:
    """Share of the TE each final-layer unit carries; they sum to the whole layer's share."""
    units = rng.normal(0.0, 0.001, D_MLP)
    if pattern == "gate":
        units[[7, 50, 200]] = 0.31
    elif pattern == "cancelling_units":
        units[[3, 90, 140]] = 0.4  # the top three overshoot the layer (1.2 of the TE) ...
        units[10:40] = -1.0 / 30  # ... and thirty others cancel them: the layer carries 0.2
    return units


def patch_rows(pattern: str, te_by_metric: dict[str, np.ndarray], seed: int) -> pd.DataFrame:
    """Claim patches: the depth profile (discovery and held-out) and the final-layer units."""
    rng = np.random.default_rng(seed)
    random_sets = [rng.choice(D_MLP, K, replace=False) for _ in range(10)]
    rows = []

    def add(pid, metric, t, role, kind, s, draw=""):
        effect = t * (s + rng.normal(0, 0.03))
        patched = effect if kind == "NIE" else t - effect
        rows.append(dict(pair_id=pid, metric=metric, role=role, kind=kind, site="", layers="", positions="all",
                         units="", draw=draw, y_benign=0.0, y_harmful=t, y_patched=patched, effect=effect))

    def add_profile(pid, metric, t, prefix=""):
        for band, shares in NECESSITY[pattern].items():
            for types, s in zip(TYPES, shares):
                add(pid, metric, t, f"{prefix}band_{band}_{types}", "NEC", s)
                rows[-1]["layers"] = BAND_LAYERS[band]
            for site, s in zip(("attn", "mlp"), request_shares(pattern, band)):
                add(pid, metric, t, f"{prefix}band_{band}_{site}_request", "NEC", s)
                rows[-1].update(layers=BAND_LAYERS[band], positions="request")

    for metric, te in te_by_metric.items():
        for i, t in enumerate(rng.normal(float(np.mean(te)), 0.3, 12)):  # the discovery pairs' profile
            add_profile(f"d{i:02d}", metric, t, claims.SELECT_PREFIX)
        for i, t in enumerate(te):
            pid = f"h{i:02d}"
            add_profile(pid, metric, t)
            units = unit_contributions(pattern, rng)
            top = np.argsort(-units, kind="stable")[:K]  # ranked on discovery: the true order here
            for kind in ("NIE", "NEC"):
                add(pid, metric, t, "c3_topk", kind, units[top].sum())
                add(pid, metric, t, "c3_layer", kind, units.sum())
                for draw, chosen in enumerate(random_sets):
                    add(pid, metric, t, "c3_random", kind, units[chosen].sum(), draw)
    return pd.DataFrame(rows)


def run_pattern(pattern: str, seed: int = 0, refusal_te: float = 2.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    held_out = {"refusal": rng.normal(refusal_te, 0.3, 16),
                "harm": rng.normal(0.0, 0.05, 16)}  # no harm behaviour: its rows are not applicable
    held_out["refusal"][:2] = [0.05, -0.02]  # two pairs without an effect are left out
    return claims.compute_claims(patch_rows(pattern, held_out, seed + 1), THRESHOLDS, BOOT, MIN_ABS_TE)


def verdicts(table: pd.DataFrame) -> dict[str, str]:
    return dict(zip(table["statistic"], table["verdict"]))


ROUTE = "late_band_necessity_share[refusal]"
ORIGIN = "late_minus_max_earlier_band_necessity_share[refusal]"
C1 = ROUTE
C2 = "late_band_mlp_minus_attn_necessity_share[refusal]"
C2_ORIGIN = "origin_band_mlp_minus_attn_necessity_share[refusal]"
C3 = ("final_layer_topk_gate_sufficiency[refusal]", "final_layer_topk_gate_necessity[refusal]")
S, NS = "supported", "not supported"
INTENDED = {
    "late_mlp": {ROUTE: S, ORIGIN: S, C2: S, C2_ORIGIN: S, C3[0]: NS, C3[1]: NS},
    "late_attn": {ROUTE: S, ORIGIN: S, C2: NS, C2_ORIGIN: NS, C3[0]: NS, C3[1]: NS},
    "late_attn_computed_on_by_mlps": {ROUTE: S, ORIGIN: S, C2: NS, C2_ORIGIN: NS, C3[0]: NS},
    "late_mlp_relayed_by_late_attn": {ROUTE: S, ORIGIN: S, C2: S, C2_ORIGIN: S},
    "gate": {ROUTE: S, ORIGIN: S, C2: S, C2_ORIGIN: S, C3[0]: S, C3[1]: S},
    # the decision is computed early: it passes through the late layers (by attention), but is
    # not made there
    "early_mlp_routed_late": {ROUTE: S, ORIGIN: NS, C2: NS, C2_ORIGIN: S, C3[0]: NS, C3[1]: NS},
    "early_mlp_bypass": {ROUTE: NS, ORIGIN: NS, C2_ORIGIN: S},
    # the origin band is the earliest within the margin of the most necessary, not the relay
    "early_mlp_relayed_by_mid_attn": {ROUTE: NS, ORIGIN: NS, C2_ORIGIN: S},
    # computed mid-depth: the early band, which reads the request, is nearly as necessary
    "mid_attn": {ORIGIN: NS, C2_ORIGIN: NS},
    # mid-depth MLPs compute on the request tokens, the band's attention carries it to the answer
    "mid_mlp_carried_by_mid_attn": {ORIGIN: NS, C2_ORIGIN: S},
    # late MLPs carry the route, attention computed the decision: C2's two rows disagree
    "mid_attn_relayed_by_late_mlps": {ROUTE: S, ORIGIN: NS, C2: S, C2_ORIGIN: NS},
    "cancelling_units": {C3[0]: NS, C3[1]: NS},
}


@pytest.mark.parametrize("pattern", sorted(INTENDED))
def test_each_pattern_gets_its_intended_verdicts(pattern: str) -> None:
    table = run_pattern(pattern)
    got = verdicts(table)
    assert {stat: got[stat] for stat in INTENDED[pattern]} == INTENDED[pattern]
    assert got["behaviour_present_TE[refusal]"] == "supported"
    rows = table.set_index("statistic")
    assert rows.loc[C1, "n_excluded"] == 2 and rows.loc[C1, "n_pairs"] == 14


def test_origin_band_is_chosen_on_the_discovery_profile_only() -> None:
    """The held-out profile never chooses: a discovery profile that points elsewhere moves C2-origin."""
    rng = np.random.default_rng(0)
    held_out = {"refusal": rng.normal(2.0, 0.3, 16), "harm": rng.normal(0.0, 0.05, 16)}
    patches = patch_rows("mid_attn_relayed_by_late_mlps", held_out, 1)
    selection_rows = patches["role"].str.startswith(claims.SELECT_PREFIX)
    assert claims.origin_band(patches[selection_rows], "refusal", MIN_ABS_TE, 0.1) == "mid"
    late_only = patches[~(selection_rows & ~patches["role"].str.contains("late"))].copy()
    assert claims.origin_band(late_only[late_only["role"].str.startswith(claims.SELECT_PREFIX)], "refusal",
                              MIN_ABS_TE, 0.1) is None  # a band missing on discovery: nothing is chosen
    moved = patches.copy()
    moved.loc[selection_rows & (moved["role"] == "select_band_late_both"), "effect"] *= 2  # discovery now says late
    moved.loc[selection_rows, "y_patched"] = moved["y_harmful"] - moved["effect"]
    table = claims.compute_claims(moved, THRESHOLDS, BOOT, MIN_ABS_TE).set_index("statistic")
    # late band: mlp-only 0.75 - attn-only 0.2 (held-out values), where mid gives 0.4 - 0.98
    assert table.loc[C2_ORIGIN, "value"] == pytest.approx(0.55, abs=0.05)
    assert claims.compute_claims(patches, THRESHOLDS, BOOT, MIN_ABS_TE).set_index("statistic").loc[
        C2_ORIGIN, "value"] == pytest.approx(-0.58, abs=0.05)


def profile(shares: dict[str, float], te: list[float], prefix: str = "") -> pd.DataFrame:
    """NEC rows of a band profile: pair i's effect for role r is shares[r] x te[i]."""
    return pd.DataFrame([dict(pair_id=f"p{i:02d}", metric="refusal", role=f"{prefix}{role}", kind="NEC", site="",
                              layers=BAND_LAYERS[role.split("_")[1]], positions="all", units="", draw="",
                              y_benign=0.0, y_harmful=t, y_patched=t - s * t, effect=s * t)
                         for i, t in enumerate(te) for role, s in shares.items()])


def test_origin_band_is_the_earliest_within_the_margin_of_the_largest() -> None:
    """A relay downstream of the computation that is as necessary as it does not move the origin."""
    shares = {"band_early_both": 0.95, "band_mid_both": 1.0, "band_late_both": 0.3}
    selection_rows = profile(shares, [2.0, 1.5, 2.5], claims.SELECT_PREFIX)
    assert claims.origin_band(selection_rows, "refusal", MIN_ABS_TE, 0.1) == "early"
    assert claims.origin_band(selection_rows, "refusal", MIN_ABS_TE, 0.04) == "mid"
    late = profile({**shares, "band_late_both": 1.2}, [2.0, 1.5, 2.5], claims.SELECT_PREFIX)
    assert claims.origin_band(late, "refusal", MIN_ABS_TE, 0.1) == "late"


def test_band_statistics_pool_effects_over_pairs() -> None:
    """Per-pair shares weighted by |TE| (sum of effects in each pair's direction / sum of |TE|),
    not their plain mean: a pair with a small TE and a large share (0.15 of TE, 0.6 more removed
    than its share) counts in proportion to its TE, and a pair whose TE is negative counts with
    its own direction instead of cancelling the others."""
    te = [2.0, 3.0, 0.15, -0.05, -1.0]  # -0.05 is left out (|TE| < 0.1)
    rows = profile({"band_early_both": 0.2, "band_mid_both": 0.3, "band_late_both": 0.9}, te)
    rows.loc[(rows["pair_id"] == "p02") & (rows["role"] == "band_late_both"), "effect"] = 0.9 * 0.15 + 0.6
    table = claims.compute_claims(rows, THRESHOLDS, BOOT, MIN_ABS_TE).set_index("statistic")
    late = (0.9 * 6.15 + 0.6) / 6.15  # pooled; the per-pair mean would be 0.9 + 4 / 4 = 1.9
    assert table.loc[ROUTE, "value"] == pytest.approx(late, abs=1e-12)
    assert table.loc[ORIGIN, "value"] == pytest.approx(late - 0.3, abs=1e-12)
    assert table.loc[ROUTE, "n_pairs"] == 4 and table.loc[ROUTE, "n_excluded"] == 1
    assert table.loc[ROUTE, "ci_low"] <= table.loc[ROUTE, "value"] <= table.loc[ROUTE, "ci_high"]


def test_values_are_shares_of_the_te() -> None:
    table = run_pattern("late_attn")
    rows = table.set_index("statistic")
    # C1-route = the late band's necessity; C1-origin = late - max(early, mid) = 1.0 - 0.2;
    # C2-route = the late band's mlp-only - attn-only necessity at every position, and C2-origin
    # the same in the origin band (here the late band too, at every position: little happens on
    # the request tokens there).
    assert rows.loc[ROUTE, "value"] == pytest.approx(1.0, abs=0.03)
    assert rows.loc[ORIGIN, "value"] == pytest.approx(1.0 - 0.2, abs=0.04)
    assert rows.loc[C2, "value"] == pytest.approx(0.3 - 0.9, abs=0.03)
    assert rows.loc[C2, "value"] == rows.loc[C2_ORIGIN, "value"]
    # Late MLPs carry most of what late attention computed: each held alone, attention still
    # removes more (0.95 against 0.75).
    table = run_pattern("late_attn_computed_on_by_mlps")
    assert table.set_index("statistic").loc[C2, "value"] == pytest.approx(0.75 - 0.95, abs=0.03)
    table = run_pattern("cancelling_units")
    # The top three alone carry 1.2 of the TE (the overshoot); counted up to the layer's 0.2.
    assert table.set_index("statistic").loc[C3[0], "value"] == pytest.approx(0.2, abs=0.05)


def test_metric_without_behaviour_is_not_applicable() -> None:
    table = run_pattern("late_mlp")
    got = verdicts(table)
    assert got["behaviour_present_TE[harm]"] != "supported"
    for stat in (ROUTE, ORIGIN, C2, C2_ORIGIN, *C3):
        assert got[stat.replace("refusal", "harm")] == claims.NOT_APPLICABLE
    weak = run_pattern("late_mlp", refusal_te=0.3)  # a clear TE below the 0.5 threshold
    assert verdicts(weak)["behaviour_present_TE[refusal]"] == "not supported"
    assert verdicts(weak)[C1] == claims.NOT_APPLICABLE


def test_missing_rows_read_not_run_and_output_is_deterministic(tmp_path: Path) -> None:
    empty = claims.compute_claims(pd.DataFrame(columns=claims.PATCH_COLUMNS), THRESHOLDS, BOOT, MIN_ABS_TE)
    assert set(empty["verdict"]) == {claims.NOT_RUN}
    assert list(empty.columns) == list(claims.CLAIM_COLUMNS)
    outputs = []
    for run in ("a", "b"):
        table = run_pattern("gate")
        claims.write_claims_csv(table, tmp_path / f"{run}.csv")
        outputs.append((tmp_path / f"{run}.csv").read_bytes())
    assert outputs[0] == outputs[1]
    reread = claims.read_claims(tmp_path / "a.csv")
    assert reread["verdict"].tolist() == table["verdict"].tolist()
    md = claims_markdown(reread, "Claims: gate", {C1: "calibrated on both sides (right on 4 plants)"})
    assert "| calibrated on both sides (right on 4 plants) |" in md and "| no ground truth |" in md


def test_verdict_rule_and_ties() -> None:
    assert claims.verdict(0.6, 0.9, 0.5) == "supported"
    assert claims.verdict(0.1, 0.4, 0.5) == "not supported"
    assert claims.verdict(0.4, 0.6, 0.5) == "inconclusive"
    assert claims.verdict(0.5, 0.6, 0.5) == "inconclusive"
    assert claims.verdict(float("nan"), 0.6, 0.5) == "inconclusive"
    assert claims.verdict(0.1, 0.4, 0.5, above=False) == "supported"
    assert list(selection.early_band(30)) == list(range(1, 10)) and list(selection.late_band(30)) == list(range(20, 30))
    assert selection.top_k(1536, 0.01) == 16 and selection.top_k(48, 0.01) == 1


def test_window_layers_match_the_verifiers_own_definition() -> None:
    from harmmed.review.verify import window_layers  # the reference verifier's independent copy

    for n in (4, 30):
        for layer in range(n):
            for window in (1, 3, 5):
                assert selection.window_layers(layer, window, n) == window_layers(layer, window, n)
    assert list(selection.window_layers(0, 5, 30)) == [0, 1, 2] and list(selection.window_layers(29, 3, 30)) == [28, 29]


def test_pairs_without_an_effect_have_no_share() -> None:
    """With min_abs_te 0, a pair whose TE is exactly 0 is left out (its share is undefined) instead
    of turning the pooled value into NaN; with only such pairs nothing is chosen or judged."""
    shares = {"band_early_both": 0.2, "band_mid_both": 0.3, "band_late_both": 0.9}
    zero = profile(shares, [0.0, 0.0], claims.SELECT_PREFIX)
    assert claims.origin_band(zero, "refusal", 0.0, 0.1) is None
    rows = claims.compute_claims(pd.concat([profile(shares, [0.0, 0.0]), zero]), THRESHOLDS, BOOT, 0.0)
    route = rows.set_index("statistic").loc[ROUTE]
    assert np.isnan(route["value"]) and route["n_pairs"] == 0 and route["n_excluded"] == 2
    mixed = claims.compute_claims(profile(shares, [0.0, 2.0, 1.0]), THRESHOLDS, BOOT, 0.0).set_index("statistic")
    assert mixed.loc[ROUTE, "value"] == pytest.approx(0.9, abs=1e-12) and mixed.loc[ROUTE, "n_pairs"] == 2


@pytest.mark.parametrize("request_mlp, where", [(0.6, "request"), (0.45, "all")])
def test_c2_origin_reads_the_request_positions_when_the_band_acts_there(request_mlp: float, where: str) -> None:
    """One type held at the request tokens removing at least C2_origin_request_share of the TE
    moves the type comparison there, where the MLPs lead; otherwise it is read at every
    position, where the attention that carries their result leads."""
    shares = {"band_early_both": 0.5, "band_mid_both": 1.0, "band_late_both": 0.6,
              "band_mid_attn_request": 0.3, "band_mid_mlp_request": request_mlp,
              "band_mid_attn": 0.9, "band_mid_mlp": 0.2}
    te = [2.0, 1.5, 2.5, 1.0]
    rows = pd.concat([profile(shares, te, claims.SELECT_PREFIX), profile(shares, te)], ignore_index=True)
    assert claims.origin_positions(rows[rows["role"].str.startswith(claims.SELECT_PREFIX)], "refusal", "mid",
                                   MIN_ABS_TE, 0.5) == where
    value = claims.compute_claims(rows, THRESHOLDS, BOOT, MIN_ABS_TE).set_index("statistic").loc[C2_ORIGIN, "value"]
    assert value == pytest.approx(request_mlp - 0.3 if where == "request" else 0.2 - 0.9, abs=1e-12)
    without_request = rows[~rows["role"].str.endswith("_request")]
    assert claims.origin_positions(without_request, "refusal", "mid", MIN_ABS_TE, 0.0) == "all"
