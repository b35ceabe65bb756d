"""Neuron-level mediation: exact identities on tiny models, and the C3 statistics on planted data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tiny import tiny_model

from harmmed.analyses.neuron import NeuronPlan, blocks, k_grid, pair_neuron_rows
from harmmed.stats.ranking import rank_units
from harmmed.constants import METRICS
from harmmed.datasets.prompts import EncodedPair
from harmmed.patching.engine import MediationEngine
from harmmed.patching.patches import Patch

PROMPT = [30, 31, 32, 33, 34, 35, 36, 37, 38, 39]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request):
    engine = MediationEngine(tiny_model(request.param), refusal_ids=[3, 5])
    benign = list(PROMPT)
    benign[4] = 50
    pair = EncodedPair("p-1", "discovery", "x", PROMPT, benign, [20, 21], [8, 9])
    runs = (engine.run(pair.harmful_ids, pair.target_ids), engine.run(pair.benign_ids, pair.target_ids))
    return engine, pair, runs


def test_whole_layer_of_neurons_reproduces_the_mlp_nie(setup):
    engine, pair, (harmful, benign) = setup
    plan = NeuronPlan(layers=[engine.sites.n_layers - 1], block_size=16, block_pairs=1)
    rows = pd.DataFrame(pair_neuron_rows(engine, pair, (harmful, benign), plan, every_layer_blocks=True))
    everywhere = tuple(range(len(PROMPT)))
    for layer in range(engine.sites.n_layers):
        whole = rows[(rows["layer"] == layer) & (rows["block"] == f"0:{engine.sites.d_mlp}") & (rows["site"] == "neuron")]
        mlp = engine.patch(benign, harmful, [(Patch("mlp", layer, everywhere),)], fast=False)[0]
        np.testing.assert_allclose(whole["y_patched"].to_numpy(), mlp, atol=1e-5, rtol=0)


def test_block_equals_its_neurons_patched_together(setup):
    engine, pair, (harmful, benign) = setup
    plan = NeuronPlan(layers=[engine.sites.n_layers - 1], block_size=16, block_pairs=1)
    rows = pd.DataFrame(pair_neuron_rows(engine, pair, (harmful, benign), plan, every_layer_blocks=True))
    everywhere = tuple(range(len(PROMPT)))
    for layer in (0, engine.sites.n_layers - 1):
        start, stop = blocks(engine.sites.d_mlp, 16)[1]
        joint = tuple(Patch("neuron", layer, everywhere, (j,)) for j in range(start, stop))
        expected = engine.patch(benign, harmful, [joint], fast=False)[0]
        block = rows[(rows["layer"] == layer) & (rows["block"] == f"{start}:{stop}")]
        np.testing.assert_allclose(block["y_patched"].to_numpy(), expected, atol=1e-5, rtol=0)


def test_single_final_layer_neurons_sum_to_nothing_more_than_the_layer(setup):
    """Final-layer neurons act linearly on the residual before the norm; the single NIEs are
    exact, so their count and the layer row are all present."""
    engine, pair, runs = setup
    plan = NeuronPlan(layers=[engine.sites.n_layers - 1], block_size=16, block_pairs=0)
    rows = pd.DataFrame(pair_neuron_rows(engine, pair, runs, plan, every_layer_blocks=False))
    singles = rows[(rows["site"] == "neuron") & (rows["block"] == "")]
    assert len(singles) == engine.sites.d_mlp * len(METRICS)
    assert len(rows[(rows["site"] == "attn_dims") & (rows["block"] == "")]) == engine.sites.d_model * len(METRICS)


def test_ranking_is_oriented_and_stable():
    rows = []
    for pair in ("a", "b"):
        for unit, effect in enumerate([-0.1, -0.5, 0.2, -0.5]):
            for metric in METRICS:
                rows.append({"pair_id": pair, "metric": metric, "site": "neuron", "layer": 3, "neuron": unit,
                             "block": "", "effect": effect})
        for metric in METRICS:
            rows.append({"pair_id": pair, "metric": metric, "site": "neuron", "layer": 3, "neuron": "",
                         "block": "0:4", "effect": -0.9})
    ranking = rank_units(pd.DataFrame(rows), "neuron", 3)
    order = ranking[ranking["metric"] == "refusal"].sort_values("rank")["unit"].tolist()
    assert order == [1, 3, 0, 2]  # negative layer effect: most negative first, ties by index


def test_k_grid():
    assert k_grid(48, [16, 5]) == [1, 2, 4, 5, 8, 16, 32, 48]


