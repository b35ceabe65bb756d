"""Neuron-level mediation and the gating test (claim C3).

A neuron is one unit of the MLP down-projection input (SwiGLU: act(gate) * up). Single-neuron
sweeps are exact and stay affordable because a patch confined to the final block only changes
the last prompt position's logits: the engine recomputes one token through one block per neuron.
Other layers are covered by contiguous blocks of B neurons, the grouping the paper assumes; the
adjacency assumption is then tested at the final layer, where both are measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..constants import METRICS, UNIT_SITES
from ..datasets.prompts import EncodedPair
from ..patching.engine import MediationEngine
from ..patching.patches import Given, Patch, Run
from .pairs import clean_runs, joint_positions
from .rows import outcome_rows


def blocks(width: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, width)) for start in range(0, width, size)]


def k_grid(width: int, extra: list[int]) -> list[int]:
    """Powers of two up to the layer width, plus the sizes other analyses compare against."""
    grid = {1 << i for i in range(width.bit_length()) if (1 << i) <= width} | {width} | set(extra)
    return sorted(k for k in grid if 1 <= k <= width)


def _rows(pair: EncodedPair, runs: tuple[Run, Run], labels: list[dict], ys: np.ndarray, kind: str = "NIE") -> list[dict]:
    shared = {"kind": kind, "window": 1, "positions": joint_positions(pair, kind)[0]}
    return outcome_rows(pair.pair_id, [{**shared, **label} for label in labels], ys, runs)


def final_and_extra_layers(n_layers: int, extra: list[int]) -> list[int]:
    """The final layer first, then the configured extra layers (negative ones count from the end)."""
    layers = [n_layers - 1]
    for layer in extra:
        resolved = layer % n_layers if -n_layers <= layer < n_layers else None
        if resolved is None:
            raise ValueError(f"neuron.extra_layers: layer {layer} outside a {n_layers}-layer model")
        if resolved not in layers:
            layers.append(resolved)
    return layers


@dataclass
class NeuronPlan:
    layers: list[int]  # exact per-neuron layers (final first)
    block_size: int
    block_pairs: int  # pairs that get blocks in every layer (all pairs get final-layer blocks)
    attn_dims: bool = True  # per-dimension sweep of the final attention output-projection input


def pair_neuron_rows(engine: MediationEngine, pair: EncodedPair, runs: tuple[Run, Run], plan: NeuronPlan,
                     every_layer_blocks: bool, progress=None) -> list[dict]:
    """All single-neuron, block and whole-layer NIE rows of one pair."""
    harmful, benign = runs
    sites = engine.sites
    everywhere = joint_positions(pair, "NIE")[1]
    final = sites.n_layers - 1
    labels: list[dict] = []
    interventions: list[tuple[Patch, ...]] = []

    def add(site: str, layer: int, units: tuple[int, ...] | None, neuron: int | str, block: str) -> None:
        labels.append({"site": site, "layer": layer, "neuron": neuron, "block": block})
        interventions.append((Patch(site, layer, everywhere, units),))

    for layer in plan.layers:
        for j in range(sites.d_mlp):
            add("neuron", layer, (j,), j, "")
    block_layers = range(sites.n_layers) if every_layer_blocks else [final]
    for layer in block_layers:
        for start, stop in blocks(sites.d_mlp, plan.block_size):
            add("neuron", layer, tuple(range(start, stop)), "", f"{start}:{stop}")
        add("neuron", layer, None, "", f"0:{sites.d_mlp}")  # the whole MLP layer
    if plan.attn_dims:
        for j in range(sites.d_model):
            add("attn_dims", final, (j,), j, "")
        add("attn_dims", final, None, "", f"0:{sites.d_model}")
    ys = engine.patch(benign, harmful, interventions, progress=progress)
    return _rows(pair, runs, labels, ys)


def top_units(ranking: pd.DataFrame, metric: str, site: str, k: int) -> list[int]:
    chosen = ranking[(ranking["metric"] == metric) & (ranking["site"] == site)]
    return sorted(chosen.nsmallest(k, "rank")["unit"].astype(int).tolist())


def sparsity_rows(engine: MediationEngine, pair: EncodedPair, runs: tuple[Run, Run], ranking: pd.DataFrame,
                  grid: list[int], draws: int, seed: int) -> list[dict]:
    """Joint NIE of the top-k final-layer neurons (per metric's ranking) and of random k."""
    harmful, benign = runs
    final = engine.sites.n_layers - 1
    everywhere = joint_positions(pair, "NIE")[1]
    rng = np.random.default_rng(seed)
    width = engine.sites.d_mlp
    random_sets = {k: [tuple(sorted(rng.choice(width, k, replace=False).tolist())) for _ in range(draws)] for k in grid}
    labels, interventions = [], []
    for metric in engine.scored:
        order = ranking[(ranking["metric"] == metric) & (ranking["site"] == "neuron")].sort_values("rank")["unit"]
        order = order.astype(int).tolist()
        for k in grid:
            labels.append({"metric": metric, "selection": "top", "draw": "", "k": k})
            interventions.append((Patch("neuron", final, everywhere, tuple(sorted(order[:k]))),))
    for k in grid:
        for draw, units in enumerate(random_sets[k]):
            labels.append({"metric": "*", "selection": "random", "draw": draw, "k": k})
            interventions.append((Patch("neuron", final, everywhere, units),))
    interventions.append((Patch("neuron", final, everywhere, None),))  # the whole layer, last
    ys = engine.patch(benign, harmful, interventions)
    layer_y = ys[-1]
    rows = outcome_rows(pair.pair_id, labels, ys[:-1], runs)
    for row in rows:
        row["layer_effect"] = float(layer_y[METRICS.index(row["metric"])]) - benign.y[row["metric"]]
    return rows


def benign_means(engine: MediationEngine, pairs: list[EncodedPair], sites: tuple[str, ...], layer: int
                 ) -> dict[str, np.ndarray]:
    """Mean of each site's units over the benign-role runs at their last prompt position (noise
    mode: over every corrupted draw)."""
    runs = engine.runs([(p.benign_ids, p.target_ids) for p in pairs if p.noise_span is None])
    for pair in pairs:
        if pair.noise_span is not None:
            runs += clean_runs(engine, pair)[1].samples
    return {site: np.mean([r.acts[(site, layer)][r.prompt_len - 1].float().cpu().numpy() for r in runs], axis=0)
            for site in sites}


def gating_rows(engine: MediationEngine, pair: EncodedPair, runs: tuple[Run, Run], unit_sets: dict[str, list[list[int]]],
                means: dict[str, np.ndarray]) -> list[dict]:
    """Held-out gating: on the harmful run, set each unit set of the final block to the pair's
    benign values, or to the benign mean (mean ablation); effect = y_patched - y_harmful."""
    harmful, benign = runs
    final = engine.sites.n_layers - 1
    last = harmful.prompt_len - 1
    labels, interventions = [], []
    for name, sets in unit_sets.items():
        site = "attn_dims" if name.endswith("attn_dims") else "neuron"
        for draw, units in enumerate(sets):
            labels.append((name, draw if name.startswith("random") else "", len(units), site, tuple(units)))
            interventions.append((Patch(site, final, (last,), tuple(units)),))
    patched = engine.patch(harmful, benign, interventions)
    # Mean ablation: the same units set to their benign means, one batched pass per site.
    ablated = np.empty_like(patched)
    for site in UNIT_SITES:
        chosen = [i for i, label in enumerate(labels) if label[3] == site]
        if chosen:
            ablated[chosen] = engine.patch(harmful, harmful, [
                (Patch(site, final, (last,), labels[i][4], Given(tuple(float(means[site][u]) for u in labels[i][4]))),)
                for i in chosen])
    named = [dict(zip(("units", "draw", "k"), label[:3])) for label in labels]
    return outcome_rows(pair.pair_id, [{"intervention": "patch_benign", **n} for n in named]
                        + [{"intervention": "mean_ablate", **n} for n in named],
                        list(patched) + list(ablated), runs, effect_from="harmful")


def gating_units_json(path: str | Path, layer: int, top: list[int], means: np.ndarray, random_units: list[int]) -> None:
    Path(path).write_text(json.dumps({
        "layer": layer, "units": top, "benign_mean": [float(means[j]) for j in top],
        "random_units": random_units, "random_mean": [float(means[j]) for j in random_units],
    }, indent=2) + "\n", encoding="utf-8")
