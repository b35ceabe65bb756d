"""The held-out interventions behind the C1-C3 statistics (results/<model>/claim_patches.csv).

Components are chosen on the discovery split (C1 windows from module.csv, the C3 units from
neuron_ranking.csv) and every intervention here runs on the held-out split, so no statistic is
judged on the pairs that selected its components. Necessity rows hold a mediator at its value
in the benign run of the same pair (the engine patches the harmful run from the benign one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..constants import METRICS
from ..datasets.prompts import EncodedPair
from ..patching.engine import MediationEngine
from ..patching.patches import NoisedRuns, Patch, Run
from .neuron import top_units
from .pairs import position_sets
from .rows import outcome_rows
from .selection import Window, select_c1_windows, top_k


@dataclass(frozen=True)
class ClaimPlan:
    """Everything chosen before the held-out pairs are seen."""

    positions: str  # named position set of every patch (from mediation.module_positions)
    c1: dict[tuple[str, str], Window]  # (metric, "early" | "late") -> window chosen on discovery
    c2: dict[str, tuple[Window, Window]]  # metric -> mlp and attn outputs on the layers of its C1 late window
    top: dict[str, tuple[int, ...]]  # metric -> its top-k final-layer units
    random: list[tuple[int, ...]]  # random k-unit sets, shared by every pair
    final_layer: int


@dataclass(frozen=True)
class ClaimSettings:
    """The settings the claim patches are chosen by, read once from the config."""

    positions: str  # the first of mediation.module_positions: the module windows were ranked there
    top_fraction: float  # claims.top_fraction: C3's k as a share of d_mlp
    random_draws: int
    seed: int
    min_abs_te: float  # effects.min_abs_te: discovery pairs with a smaller |TE| choose nothing

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ClaimSettings:
        claims = cfg["claims"]
        return cls(cfg["mediation"]["module_positions"][0], float(claims["top_fraction"]), claims["random_draws"],
                   claims["seed"], float(cfg["effects"]["min_abs_te"]))


def build_plan(settings: ClaimSettings, manifest: Mapping[str, Any], module_df: pd.DataFrame,
               ranking: pd.DataFrame) -> ClaimPlan:
    """Choose the C1 windows and C3 units from the discovery tables and draw the random sets."""
    n_layers, d_mlp = int(manifest["n_layers"]), int(manifest["d_mlp"])
    positions = settings.positions
    k = top_k(d_mlp, settings.top_fraction)
    rng = np.random.default_rng(settings.seed)
    c1 = select_c1_windows(module_df, positions, n_layers, settings.min_abs_te)
    return ClaimPlan(
        positions=positions,
        c1=c1,
        c2={metric: (Window("mlp", window.layers), Window("attn", window.layers))
            for (metric, band), window in sorted(c1.items()) if band == "late"},
        top={metric: tuple(top_units(ranking, metric, "neuron", k)) for metric in METRICS},
        random=[tuple(sorted(rng.choice(d_mlp, k, replace=False).tolist())) for _ in range(settings.random_draws)],
        final_layer=n_layers - 1,
    )


Item = tuple[dict[str, Any], tuple[str, ...], tuple[Patch, ...]]  # labels, metrics recorded, intervention


def _items(plan: ClaimPlan, positions: tuple[int, ...], kind: str) -> list[Item]:
    """The interventions of one direction (NIE or NEC) at one base run's positions."""
    def band(window: Window) -> tuple[Patch, ...]:
        return tuple(Patch(window.site, layer, positions) for layer in window.layers)

    def units(chosen: tuple[int, ...] | None) -> tuple[Patch, ...]:
        return (Patch("neuron", plan.final_layer, positions, chosen),)

    def label(role: str, site: str, layers: str, n_units: Any = "", draw: Any = "") -> dict[str, Any]:
        return dict(role=role, kind=kind, site=site, layers=layers, units=n_units, draw=draw)

    final = f"{plan.final_layer}:{plan.final_layer + 1}"
    items: list[Item] = []
    if kind == "NIE":
        for (metric, name), window in sorted(plan.c1.items()):
            items.append((label(f"c1_{name}", window.site, window.label), (metric,), band(window)))
        for metric, windows in sorted(plan.c2.items()):
            for window in windows:
                items.append((label(f"c2_{window.site}", window.site, window.label), (metric,), band(window)))
    for metric, chosen in plan.top.items():
        if chosen:
            items.append((label("c3_topk", "neuron", final, len(chosen)), (metric,), units(chosen)))
    items.append((label("c3_layer", "neuron", final), METRICS, units(None)))
    for draw, chosen in enumerate(plan.random):
        items.append((label("c3_random", "neuron", final, len(chosen), draw), METRICS, units(chosen)))
    return items


def pair_rows(engine: MediationEngine, pair: EncodedPair, runs: tuple[Run, Run | NoisedRuns], plan: ClaimPlan
              ) -> list[dict]:
    """Every claim patch of one held-out pair, both directions, as PATCH_COLUMNS rows. Positions
    index each direction's base run (right-aligned for unpaired prompts); in noise mode the
    corrupted runs play the benign role."""
    harmful, benign = runs
    rows: list[dict] = []
    for kind, base, source in (("NIE", benign, harmful), ("NEC", harmful, benign)):
        positions = position_sets(pair, "NIE" if kind == "NIE" else "NDE")[plan.positions]  # the base run's
        items = _items(plan, positions, kind)
        # C2's window of C1's type is C1's late window again: the engine runs each distinct
        # intervention once and copies its outcome to the repeats.
        ys = engine.patch(base, source, [iv for _, _, iv in items])
        labels = [{"metric": metrics[0] if len(metrics) == 1 else "*", **label, "positions": plan.positions}
                  for label, metrics, _ in items]
        rows += outcome_rows(pair.pair_id, labels, ys, (harmful, benign),  # NEC: the harmful outcome lost
                             effect_from="benign" if kind == "NIE" else "harmful", lost=kind == "NEC")
    return rows
