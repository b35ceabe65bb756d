"""The held-out interventions behind the C1-C3 statistics (results/<model>/claim_patches.csv).

Components are chosen on the discovery split (the C3 units from neuron_ranking.csv, the origin
band from the ``select_`` rows below) and every judged
intervention runs on the held-out split, so no statistic is judged on the pairs that selected
its components. Necessity rows hold a mediator at its value in the benign run of the same pair
(the engine patches the harmful run from the benign one).

The depth profile (roles ``band_<band>_<types>``, kind NEC) holds every attention output, every
MLP output, or both, of one depth band at their benign values at all positions of the harmful
run; each type is also held alone at the request positions only (``band_<band>_<type>_request``).
It is run on the held-out pairs, and again on the discovery pairs of the module sweep with roles
``select_band_...``: those choose the band C2-origin and C4-causal are judged at, and the
positions C2-origin compares the types at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..constants import METRICS, metrics_in
from ..datasets.prompts import EncodedPair
from ..patching.engine import MediationEngine
from ..patching.patches import NoisedRuns, Patch, Run
from .neuron import top_units
from .pairs import position_sets
from .rows import outcome_rows
from .selection import origin_bands, top_k

BAND_TYPES: dict[str, tuple[str, ...]] = {"both": ("attn", "mlp"), "attn": ("attn",), "mlp": ("mlp",)}
SELECT_PREFIX = "select_"  # roles of the depth profile on discovery pairs


@dataclass(frozen=True)
class ClaimPlan:
    """Everything chosen before the held-out pairs are seen."""

    positions: str  # named position set of every patch (from mediation.module_positions)
    bands: dict[str, tuple[int, ...]]  # the depth profile's bands: early, mid, late
    top: dict[str, tuple[int, ...]]  # metric -> its top-k final-layer units
    random: list[tuple[int, ...]]  # random k-unit sets, shared by every pair
    final_layer: int


@dataclass(frozen=True)
class ClaimSettings:
    """The settings the claim patches are chosen by, read once from the config."""

    positions: str  # the first of mediation.module_positions: where the module sweep patches
    top_fraction: float  # claims.top_fraction: C3's k as a share of d_mlp
    random_draws: int
    seed: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ClaimSettings:
        claims = cfg["claims"]
        return cls(cfg["mediation"]["module_positions"][0], float(claims["top_fraction"]), claims["random_draws"],
                   claims["seed"])


def build_plan(settings: ClaimSettings, manifest: Mapping[str, Any], ranking: pd.DataFrame) -> ClaimPlan:
    """Choose the C3 units from the discovery ranking and draw the random sets."""
    n_layers, d_mlp = int(manifest["n_layers"]), int(manifest["d_mlp"])
    k = top_k(d_mlp, settings.top_fraction)
    rng = np.random.default_rng(settings.seed)
    return ClaimPlan(
        positions=settings.positions,
        bands={name: tuple(layers) for name, layers in origin_bands(n_layers).items()},
        top={metric: tuple(top_units(ranking, metric, "neuron", k)) for metric in metrics_in(ranking)},
        random=[tuple(sorted(rng.choice(d_mlp, k, replace=False).tolist())) for _ in range(settings.random_draws)],
        final_layer=n_layers - 1,
    )


Item = tuple[dict[str, Any], tuple[str, ...], tuple[Patch, ...]]  # labels, metrics recorded, intervention


def profile_items(plan: ClaimPlan, sets: Mapping[str, tuple[int, ...]], prefix: str = "") -> list[Item]:
    """The depth profile (necessity): each band's attention outputs, MLP outputs, or both, held
    at the plan's positions; and each type alone held at the request positions only (roles
    ``..._request``), which tell a band that works on the request tokens from one whose attention
    carries a result to where the answer is read. ``sets`` are the base run's named position
    sets; prompts of different lengths have no matching request positions, and no such rows."""
    items: list[Item] = []
    for name, layers in plan.bands.items():
        span = f"{layers[0]}:{layers[-1] + 1}"
        for types, sites in BAND_TYPES.items():
            label = dict(role=f"{prefix}band_{name}_{types}", kind="NEC", site="+".join(sites), layers=span,
                         units="", draw="")
            items.append((label, METRICS, tuple(Patch(site, layer, sets[plan.positions])
                                                for layer in layers for site in sites)))
        for site in ("attn", "mlp") if sets["request"] else ():
            label = dict(role=f"{prefix}band_{name}_{site}_request", kind="NEC", site=site, layers=span, units="",
                         draw="", positions="request")
            items.append((label, METRICS, tuple(Patch(site, layer, sets["request"]) for layer in layers)))
    return items


def _items(plan: ClaimPlan, sets: Mapping[str, tuple[int, ...]], kind: str) -> list[Item]:
    """The interventions of one direction (NIE or NEC) at one base run's named position sets."""
    positions = sets[plan.positions]

    def units(chosen: tuple[int, ...] | None) -> tuple[Patch, ...]:
        return (Patch("neuron", plan.final_layer, positions, chosen),)

    def label(role: str, site: str, layers: str, n_units: Any = "", draw: Any = "") -> dict[str, Any]:
        return dict(role=role, kind=kind, site=site, layers=layers, units=n_units, draw=draw)

    final = f"{plan.final_layer}:{plan.final_layer + 1}"
    items: list[Item] = []
    for metric, chosen in plan.top.items():
        if chosen:
            items.append((label("c3_topk", "neuron", final, len(chosen)), (metric,), units(chosen)))
    items.append((label("c3_layer", "neuron", final), METRICS, units(None)))
    for draw, chosen in enumerate(plan.random):
        items.append((label("c3_random", "neuron", final, len(chosen), draw), METRICS, units(chosen)))
    if kind == "NEC":
        items += profile_items(plan, sets)
    return items


def pair_rows(engine: MediationEngine, pair: EncodedPair, runs: tuple[Run, Run | NoisedRuns], plan: ClaimPlan
              ) -> list[dict]:
    """Every claim patch of one held-out pair, both directions, as PATCH_COLUMNS rows. Positions
    index each direction's base run (right-aligned for unpaired prompts); in noise mode the
    corrupted runs play the benign role."""
    rows: list[dict] = []
    for kind in ("NIE", "NEC"):
        sets = position_sets(pair, "NIE" if kind == "NIE" else "NDE")  # the base run's
        rows += _run_items(engine, pair, runs, _items(plan, sets, kind), kind, plan.positions)
    return rows


def selection_rows(engine: MediationEngine, pair: EncodedPair, runs: tuple[Run, Run | NoisedRuns],
                   plan: ClaimPlan) -> list[dict]:
    """The depth profile of one discovery pair (roles ``select_band_...``): it chooses the origin band."""
    return _run_items(engine, pair, runs, profile_items(plan, position_sets(pair, "NDE"), SELECT_PREFIX), "NEC",
                      plan.positions)


def _run_items(engine: MediationEngine, pair: EncodedPair, runs: tuple[Run, Run | NoisedRuns], items: list[Item],
               kind: str, positions: str) -> list[dict]:
    """PATCH_COLUMNS rows of one direction's items. NIE patches the benign run from the harmful
    one; NEC the harmful run from the benign one and records the outcome lost. The engine runs
    each distinct intervention once and copies its outcome to repeats."""
    harmful, benign = runs
    base, source = (benign, harmful) if kind == "NIE" else (harmful, benign)
    ys = engine.patch(base, source, [iv for _, _, iv in items])
    labels = [{"metric": metrics[0] if len(metrics) == 1 else "*", "positions": positions, **label}
              for label, metrics, _ in items]
    return outcome_rows(pair.pair_id, labels, ys, (harmful, benign),
                        effect_from="benign" if kind == "NIE" else "harmful", lost=kind == "NEC")
