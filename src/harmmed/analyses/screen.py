"""The unit screen: attribution estimates of every MLP unit at every layer, checked exactly.

For each screened pair the attribution estimate (``attribution``) gives every unit's NIE at
every layer and position set from one backward pass per metric. Exact patches with the engine
then verify, at every layer, the top-K units by |estimate| and a seeded random sample of the
rest, and every unit of the final layer (cheap there). The estimates also rank units on the
discovery split, and held-out pairs measure exactly, at every layer, what that ranking is
worth: the joint NIE of the top-k units against random k and the whole layer (the sparsity
curve, in TE units), and of the best contiguous block of B units against the best B units
anywhere (the adjacency test).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..constants import METRICS
from ..datasets.prompts import EncodedPair
from ..patching.attribution import unit_estimates, unit_gradients
from ..patching.engine import MediationEngine
from ..patching.patches import Patch, Run
from .pairs import position_sets
from .rows import outcome_rows
from .sweep import sweep

SCREEN_COLUMNS = ["pair_id", "metric", "layer", "unit", "positions", "estimate", "exact", "verified"]
HELDOUT_COLUMNS = ["pair_id", "metric", "layer", "positions", "selection", "draw", "k", "units",
                   "y_benign", "y_harmful", "y_patched", "effect", "te", "share"]


@dataclass(frozen=True)
class ScreenSettings:
    """The ``screen`` config section, typed."""

    positions: tuple[str, ...]  # named position sets (all, post, last)
    per_position_layers: tuple[int, ...]  # layers that also get one row per single prompt position
    top_k: int  # verified per layer: the top-K units by |estimate| of each metric
    random_sample: int  # ... plus this many of the rest, seeded
    verify_pairs: int  # the first screened pairs get exact verification
    seed: int
    heldout_positions: str  # position set of the held-out sparsity and adjacency patches
    k_grid: tuple[int, ...]
    block_size: int  # B of the adjacency test
    random_draws: int  # random-k draws per k and layer
    min_abs_te: float  # held-out pairs with |TE| below this get no share

    @classmethod
    def from_config(cls, cfg: Mapping) -> ScreenSettings:
        s, held = cfg["screen"], cfg["screen"]["held_out"]
        if held["positions"] not in s["positions"]:  # its ranking comes from the screened estimates
            raise ValueError(f"screen.held_out.positions: {held['positions']!r} must be one of screen.positions "
                             f"{s['positions']}")
        return cls(tuple(s["positions"]), tuple(s["per_position_layers"]), s["top_k"], s["random_sample"],
                   s["verify_pairs"], s["seed"], held["positions"], tuple(held["k"]), held["block_size"],
                   held["random_draws"], cfg["effects"]["min_abs_te"])


@dataclass(frozen=True)
class PositionSet:
    name: str  # a named set, or one prompt position's index
    positions: tuple[int, ...]
    layers: tuple[int, ...]  # layers whose units get rows for this set


@dataclass
class PairScreen:
    """One pair's estimates (metric, set) -> (n_layers, d_mlp) and, where verified, exact NIEs
    (set, layer) -> {unit: (reason, effect per metric)}."""

    pair: EncodedPair
    y_benign: dict[str, float]
    y_harmful: dict[str, float]
    estimates: dict[tuple[str, str], np.ndarray]
    exact: dict[tuple[str, int], dict[int, tuple[str, np.ndarray]]]

    def te(self, metric: str) -> float:
        return self.y_harmful[metric] - self.y_benign[metric]


def screen_sets(pair: EncodedPair, settings: ScreenSettings, n_layers: int) -> list[PositionSet]:
    named = position_sets(pair)
    unknown = [name for name in settings.positions if name not in named]
    if unknown:
        raise ValueError(f"screen.positions: unknown position set(s) {unknown}; known: {sorted(named)}")
    every = tuple(range(n_layers))
    sets = [PositionSet(name, named[name], every) for name in settings.positions]
    layers = tuple(sorted({_resolve_layer(layer, n_layers) for layer in settings.per_position_layers}))
    if layers:
        sets += [PositionSet(str(q), (q,), layers) for q in range(len(pair.benign_ids))]
    return sets


def _resolve_layer(layer: int, n_layers: int) -> int:
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"screen.per_position_layers: layer {layer} outside a {n_layers}-layer model")
    return layer % n_layers


def chosen_units(estimates: Mapping[str, np.ndarray], final: bool, top_k: int, n_random: int,
                 rng: np.random.Generator) -> dict[int, str]:
    """Units to verify in one layer: each metric's top-K by |estimate| (ties by unit index),
    then a random sample of the rest; at the final layer, every unit."""
    width = len(next(iter(estimates.values())))
    chosen: dict[int, str] = {}
    for values in estimates.values():
        for unit in np.lexsort((np.arange(width), -np.abs(values)))[:top_k]:
            chosen[int(unit)] = "top_k"
    rest = np.array([u for u in range(width) if u not in chosen], dtype=int)
    if final:
        chosen.update({int(u): "final_layer" for u in rest})
    elif n_random and len(rest):
        chosen.update({int(u): "random" for u in rng.choice(rest, min(n_random, len(rest)), replace=False)})
    return dict(sorted(chosen.items()))


def screen_pair(engine: MediationEngine, pair: EncodedPair, runs: tuple[Run, Run], sets: list[PositionSet],
                settings: ScreenSettings, pair_index: int, verify: bool) -> PairScreen:
    """Estimates of every unit (benign base, harmful source: NIE), and the exact check."""
    harmful, benign = runs
    grads, _ = unit_gradients(engine, benign)
    estimates = unit_estimates(grads, benign, harmful, {s.name: s.positions for s in sets})
    screen = PairScreen(pair, dict(benign.y), dict(harmful.y), estimates, {})
    if verify:
        final = engine.sites.n_layers - 1
        plan: list[tuple[str, int, int, str]] = []
        for set_index, position_set in enumerate(sets):
            for layer in position_set.layers:
                rng = np.random.default_rng([settings.seed, pair_index, set_index, layer])
                per_metric = {m: estimates[(m, position_set.name)][layer] for m in METRICS}
                units = chosen_units(per_metric, layer == final, settings.top_k, settings.random_sample, rng)
                plan += [(position_set.name, layer, unit, reason) for unit, reason in units.items()]
        positions = {s.name: s.positions for s in sets}
        ys = engine.patch(benign, harmful, [(Patch("neuron", layer, positions[name], (unit,)),)
                                            for name, layer, unit, _ in plan], scored=METRICS)  # every estimate checked
        base_y = np.array([benign.y[m] for m in METRICS])
        for (name, layer, unit, reason), y in zip(plan, ys):
            screen.exact.setdefault((name, layer), {})[unit] = (reason, y - base_y)
    return screen


def screen_pairs(engine: MediationEngine, pairs: Sequence[EncodedPair], settings: ScreenSettings
                 ) -> tuple[list[PairScreen], dict[str, list[PositionSet]]]:
    """Screen every pair; the first ``verify_pairs`` of them are verified exactly."""
    sets_of = {pair.pair_id: screen_sets(pair, settings, engine.sites.n_layers) for pair in pairs}
    screens = sweep(engine, list(pairs), lambda step: [
        screen_pair(engine, step.pair, step.runs, sets_of[step.pair.pair_id], settings, step.index,
                    verify=step.index < settings.verify_pairs)], "screen")
    return screens, sets_of


def outcome_table(screens: Sequence[PairScreen]) -> pd.DataFrame:
    """Each screened pair's clean outcomes per metric (the report's y_benign, y_harmful)."""
    return pd.DataFrame([{"pair_id": s.pair.pair_id, "metric": m, "y_benign": s.y_benign[m],
                          "y_harmful": s.y_harmful[m]} for s in screens for m in METRICS])


def screen_table(screens: Sequence[PairScreen], sets_of: Mapping[str, list[PositionSet]]) -> pd.DataFrame:
    """One row per (pair, metric, layer, unit, positions) in SCREEN_COLUMNS, in a fixed order."""
    parts = []
    for screen in screens:
        for m_index, metric in enumerate(METRICS):
            for position_set in sets_of[screen.pair.pair_id]:
                values = screen.estimates[(metric, position_set.name)]
                for layer in position_set.layers:
                    width = values.shape[1]
                    exact = np.full(width, np.nan)
                    verified = np.full(width, "", dtype=object)
                    for unit, (reason, effect) in screen.exact.get((position_set.name, layer), {}).items():
                        exact[unit], verified[unit] = effect[m_index], reason
                    parts.append(pd.DataFrame({
                        "pair_id": screen.pair.pair_id, "metric": metric, "layer": layer, "unit": np.arange(width),
                        "positions": position_set.name, "estimate": values[layer], "exact": exact,
                        "verified": verified}))
    return pd.concat(parts, ignore_index=True)[SCREEN_COLUMNS] if parts else pd.DataFrame(columns=SCREEN_COLUMNS)


# ---------------------------------------------------------------- discovery ranking, held-out test
def discovery_ranking(screens: Sequence[PairScreen], positions: str) -> dict[str, np.ndarray]:
    """Per metric, the mean estimate over the screened pairs oriented along the metric's mean
    TE (positive = pushes y the way the harmful prompt does): (n_layers, d_mlp)."""
    out = {}
    for metric in METRICS:
        sign = np.sign(np.mean([s.te(metric) for s in screens])) or 1.0
        out[metric] = sign * np.mean([s.estimates[(metric, positions)] for s in screens], axis=0)
    return out


def best_block(scores: np.ndarray, size: int) -> int:
    """Start of the contiguous window of ``size`` units with the largest summed score (the
    first on ties): the best block the adjacency assumption allows, at any offset."""
    windows = np.convolve(scores, np.ones(size), mode="valid")
    return int(np.argmax(windows))


def top_order(scores: np.ndarray) -> np.ndarray:
    """Units by descending score, ties by unit index."""
    return np.lexsort((np.arange(len(scores)), -scores))


@dataclass(frozen=True)
class Selection:
    metric: str  # whose ranking chose it; "*" for selections every metric shares
    layer: int
    name: str  # top, block, random, layer
    draw: int | str
    units: tuple[int, ...] | None  # None: the whole layer


def heldout_selections(ranking: Mapping[str, np.ndarray], settings: ScreenSettings, seed: int) -> list[Selection]:
    """Unit sets patched on held-out pairs at every layer: each metric's top-k (k in the grid)
    and best contiguous block of B, random k, and the whole layer."""
    n_layers, width = next(iter(ranking.values())).shape
    block = min(settings.block_size, width)
    grid = sorted({k for k in settings.k_grid if k <= width} | {block})  # top-B and random-B meet the block
    rng = np.random.default_rng(seed)
    out = []
    for layer in range(n_layers):
        for metric, scores in ranking.items():
            order = top_order(scores[layer])
            out += [Selection(metric, layer, "top", "", tuple(sorted(order[:k].tolist()))) for k in grid]
            start = best_block(scores[layer], block)
            out.append(Selection(metric, layer, "block", "", tuple(range(start, start + block))))
        for k in grid:
            out += [Selection("*", layer, "random", draw, tuple(sorted(rng.choice(width, k, replace=False).tolist())))
                    for draw in range(settings.random_draws)]
        out.append(Selection("*", layer, "layer", "", None))
    return out


def units_label(units: tuple[int, ...] | None, width: int) -> str:
    if units is None:
        return f"0:{width}"
    if len(units) > 1 and units[-1] - units[0] == len(units) - 1:
        return f"{units[0]}:{units[-1] + 1}"
    return " ".join(map(str, units))


def heldout_rows(engine: MediationEngine, pair: EncodedPair, runs: tuple[Run, Run], selections: list[Selection],
                 settings: ScreenSettings) -> list[dict]:
    """Exact joint NIE of every selection on one held-out pair, also as a share of its TE."""
    harmful, benign = runs
    positions = position_sets(pair)[settings.heldout_positions]
    ys = engine.patch(benign, harmful, [(Patch("neuron", s.layer, positions, s.units),) for s in selections],
                      scored=METRICS)  # the selections of every metric's ranking
    width = engine.sites.d_mlp
    labels = [{"metric": s.metric, "layer": s.layer, "positions": settings.heldout_positions, "selection": s.name,
               "draw": s.draw, "k": width if s.units is None else len(s.units),
               "units": units_label(s.units, width)} for s in selections]
    rows = outcome_rows(pair.pair_id, labels, ys, runs)
    for row in rows:
        row["te"] = te = row["y_harmful"] - row["y_benign"]
        row["share"] = row["effect"] / te if abs(te) >= settings.min_abs_te else np.nan
    return rows


def heldout_sweep(engine: MediationEngine, pairs: Sequence[EncodedPair], selections: list[Selection],
                  settings: ScreenSettings) -> list[dict]:
    return sweep(engine, list(pairs), lambda step: heldout_rows(engine, step.pair, step.runs, selections, settings),
                 "held-out")
