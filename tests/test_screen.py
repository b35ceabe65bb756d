"""The attribution screen: its estimate is the exact first-order term of the engine's patch, it
is exact where the metric is linear, and its verification rows are the engine's rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import FAMILIES, tiny_model

from harmmed.analyses.neuron import NeuronPlan, pair_neuron_rows
from harmmed.analyses.pairs import position_sets
from harmmed.analyses.screen import (
    PositionSet,
    ScreenSettings,
    best_block,
    chosen_units,
    discovery_ranking,
    heldout_rows,
    heldout_selections,
    screen_pair,
    screen_sets,
    screen_table,
)
from harmmed.constants import METRICS
from harmmed.datasets.prompts import EncodedPair
from harmmed.models.hooks import HookSet
from harmmed.patching.attribution import unit_estimates, unit_gradients
from harmmed.patching.engine import MediationEngine
from harmmed.patching.patches import Patch, Run
from harmmed.stats.screen_report import heldout_summary, layer_quality, layer_report, spearman

PROMPT = [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41]
TARGET = [20, 21, 22]
SETTINGS = ScreenSettings(positions=("all", "post", "last"), per_position_layers=(), top_k=4, random_sample=5,
                          verify_pairs=1, seed=0, heldout_positions="all", k_grid=(1, 4), block_size=3,
                          random_draws=2, min_abs_te=0.0)


def make_pair(prompt: list[int] = PROMPT, span: tuple[int, ...] = (4, 6), replacement: int = 50) -> EncodedPair:
    benign = list(prompt)
    for offset, q in enumerate(span):
        benign[q] = replacement + offset
    post = list(range(len(prompt) - 3, len(prompt)))
    return EncodedPair("p-1", "discovery", "x", list(prompt), benign, list(TARGET)[: 3], post)


def runs_of(engine: MediationEngine, pair: EncodedPair) -> tuple[Run, Run]:
    harmful, benign = engine.runs([(pair.harmful_ids, pair.target_ids), (pair.benign_ids, pair.target_ids)])
    return harmful, benign


def scaled_source(base: Run, source: Run, eps: float, n_layers: int) -> Run:
    """A source whose units read base + eps * (source - base): patching from it is the
    finite-difference step of the attribution estimate."""
    acts = dict(source.acts)
    for layer in range(n_layers):
        key = ("neuron", layer)
        acts[key] = base.acts[key] + eps * (source.acts[key] - base.acts[key])
    return Run(ids=source.ids, prompt_len=source.prompt_len, target_ids=source.target_ids, acts=acts, y=source.y,
               target_logprobs=source.target_logprobs)


def finite_difference_check(family: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(y(eps) - y(0)) / eps and the estimate, for several single units and the whole MLP layer
    at every layer and position set, both metrics."""
    engine = MediationEngine(tiny_model(family, initializer_range=0.1).double(), refusal_ids=[3, 5])
    pair = make_pair()
    harmful, benign = runs_of(engine, pair)
    sets = position_sets(pair)
    estimates = unit_estimates(unit_gradients(engine, benign)[0], benign, harmful, sets)
    source = scaled_source(benign, harmful, eps, engine.sites.n_layers)
    units = [(j,) for j in (0, 7, 23, 47)] + [None]
    cells = [(name, layer, u) for name in sets for layer in range(engine.sites.n_layers) for u in units]
    ys = engine.patch(benign, source, [(Patch("neuron", layer, sets[name], u),) for name, layer, u in cells])
    fd = (ys - np.array([benign.y[m] for m in METRICS])) / eps
    expected = np.array([[estimates[(m, name)][layer][list(u) if u else slice(None)].sum() for m in METRICS]
                         for name, layer, u in cells])
    return fd, expected


@pytest.mark.parametrize("family", FAMILIES)
def test_estimate_is_the_first_order_term_of_the_patch(family):
    fd, estimate = finite_difference_check(family, 1e-3)
    scale = np.abs(estimate).max()
    assert scale > 1e-2  # the check has something to detect
    # 1% of the largest estimate: the second-order term at eps = 1e-3 plus the float32 rounding
    # some families' norms and softmax do inside a float64 model
    np.testing.assert_allclose(fd, estimate, rtol=0, atol=1e-2 * scale)


def test_finite_difference_error_shrinks_linearly_with_eps():
    """GPT-2's code computes in float64 throughout, so the finite-difference error is the
    second-order term alone and falls tenfold with eps."""
    errors = [np.abs(np.subtract(*finite_difference_check("gpt2", eps))).max() for eps in (1e-2, 1e-3)]
    assert 0.05 < errors[1] / errors[0] < 0.15


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gemma", "gpt2", "gpt_neox"])
def test_estimate_is_exact_where_the_metric_is_linear(family):
    """With two tokens the refusal log-odds is logit 0 - logit 1, and with the final norm an
    identity it is linear in the final layer's units (gemma2/3 are left out: their post-MLP
    norm is not linear), so the estimate equals the exact NIE of every unit and of the layer."""
    model = tiny_model(family, vocab_size=2, initializer_range=0.1).double()
    engine = MediationEngine(model, refusal_ids=[0])
    prompt = [0, 1, 1, 0, 1, 0, 0, 1, 1, 0]
    pair = EncodedPair("p-1", "discovery", "x", prompt, [0, 1, 1, 0, 0, 1, 0, 1, 1, 0], [1, 0], [7, 8, 9])
    final = engine.sites.n_layers - 1
    with HookSet() as hooks:
        hooks.replace_forward(engine.sites.final_norm, lambda x: x)
        harmful, benign = runs_of(engine, pair)
        # the final layer's units at the request tokens reach no logit that is read: nothing to compare
        sets = {name: positions for name, positions in position_sets(pair).items() if name != "request"}
        estimates = unit_estimates(unit_gradients(engine, benign)[0], benign, harmful, sets)
        for name, positions in sets.items():
            units = [(j,) for j in range(engine.sites.d_mlp)] + [None]
            ys = engine.patch(benign, harmful, [(Patch("neuron", final, positions, u),) for u in units])
            exact = ys[:, METRICS.index("refusal")] - benign.y["refusal"]
            row = estimates[("refusal", name)][final]
            assert np.abs(row).max() > 1e-4
            np.testing.assert_allclose(exact, np.append(row, row.sum()), rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def verified(request):
    engine = MediationEngine(tiny_model(request.param), refusal_ids=[3, 5])
    pair = make_pair()
    runs = runs_of(engine, pair)
    sets = screen_sets(pair, SETTINGS, engine.sites.n_layers)
    return engine, pair, runs, sets, screen_pair(engine, pair, runs, sets, SETTINGS, 0, verify=True)


def test_gradient_pass_reproduces_the_clean_outcome(verified):
    engine, _, (_, benign), _, _ = verified
    _, y = unit_gradients(engine, benign)
    for metric in METRICS:
        assert y[metric] == pytest.approx(benign.y[metric], abs=1e-5)


def test_verification_rows_are_the_engines_rows(verified):
    engine, pair, runs, sets, screen = verified
    harmful, benign = runs
    final = engine.sites.n_layers - 1
    table = screen_table([screen], {pair.pair_id: sets})
    checked = table[table["verified"] != ""]
    # the final layer: every unit, equal to the neuron stage's ordinary single-unit rows
    plan = NeuronPlan(layers=[final], block_size=16, block_pairs=0, attn_dims=False)
    neuron = pd.DataFrame(pair_neuron_rows(engine, pair, runs, plan, every_layer_blocks=False))
    singles = neuron[(neuron["block"] == "") & (neuron["layer"] == final)]
    ours = checked[(checked["layer"] == final) & (checked["positions"] == "all")]
    assert len(ours) == len(METRICS) * engine.sites.d_mlp
    merged = ours.merge(singles.assign(unit=singles["neuron"].astype(int)), on=["metric", "unit"])
    np.testing.assert_allclose(merged["exact"], merged["effect"], rtol=0, atol=1e-6)
    # every other layer and position set: the plain path, one full forward per patch
    lower = checked[checked["layer"] < final].drop_duplicates(["positions", "layer", "unit"])
    named = {s.name: s.positions for s in sets}
    ys = engine.patch(benign, harmful, [(Patch("neuron", int(r.layer), named[r.positions], (int(r.unit),)),)
                                        for r in lower.itertuples()], fast=False)
    for r, y in zip(lower.itertuples(), ys):
        for metric in METRICS:
            row = checked[(checked["positions"] == r.positions) & (checked["layer"] == r.layer)
                          & (checked["unit"] == r.unit) & (checked["metric"] == metric)]
            assert row["exact"].item() == pytest.approx(y[METRICS.index(metric)] - benign.y[metric], abs=1e-5)


def test_each_layer_verifies_top_k_and_a_random_sample(verified):
    engine, pair, _, sets, screen = verified
    table = screen_table([screen], {pair.pair_id: sets})
    assert len(table) == len(METRICS) * len(sets) * engine.sites.n_layers * engine.sites.d_mlp
    for (metric, name, layer), group in table.groupby(["metric", "positions", "layer"]):
        counts = group["verified"].value_counts()
        top = set(group.reindex(group["estimate"].abs().sort_values(ascending=False, kind="mergesort").index)
                  ["unit"].iloc[: SETTINGS.top_k])
        assert top <= set(group[group["verified"] == "top_k"]["unit"])
        if layer == engine.sites.n_layers - 1:
            assert (group["verified"] != "").all()
        else:
            assert counts.get("random", 0) == SETTINGS.random_sample
            assert counts["top_k"] <= len(METRICS) * SETTINGS.top_k
            assert group["exact"].isna().sum() == engine.sites.d_mlp - counts.sum() + counts.get("", 0)


def test_chosen_units_are_seeded_and_disjoint():
    estimates = {"harm": np.array([0.0, 5, -9, 1, 0, 0, 2, 0]), "refusal": np.array([3.0, 0, 0, 0, 0, 0, 0, -4])}
    first = chosen_units(estimates, False, 2, 3, np.random.default_rng(1))
    assert [u for u, r in first.items() if r == "top_k"] == [0, 1, 2, 7]
    assert sum(r == "random" for r in first.values()) == 3
    assert first == chosen_units(estimates, False, 2, 3, np.random.default_rng(1))
    assert set(chosen_units(estimates, True, 2, 3, np.random.default_rng(1))) == set(range(8))


def test_layer_quality_on_a_known_table():
    """Ten units; the screen ranks units 0 and 1 first, unit 2 is its miss; two random units
    stand for the five unverified ones."""
    estimate = [5.0, 4, 0.1, 0, 0, 0, 0, 0.2, 0.3, 0]
    exact = [4.0, 3, 2, np.nan, np.nan, np.nan, np.nan, 0.5, 1.0, np.nan]
    verified = ["top_k", "top_k", "top_k", "", "", "", "", "random", "random", ""]
    group = pd.DataFrame({"unit": range(10), "estimate": estimate, "exact": exact, "verified": verified})
    quality = layer_quality(group, 2, final=False)
    # total |exact| = 4 + 3 + 2 + (0.5 + 1.0) + 5 unverified units * mean 0.75 of the random ones
    assert quality["topk_share"] == pytest.approx(7 / (9 + 1.5 + 5 * 0.75))
    assert quality["n_verified"] == 5 and quality["n_random"] == 2
    assert quality["max_abs_error"] == pytest.approx(1.9)
    assert np.isnan(quality["precision_at_k"])
    final = group.assign(exact=[4.0, 3, 2, 0, 0, 0, 0, 0.5, 1.0, 0], verified="final_layer")
    quality = layer_quality(final, 2, final=True)
    assert quality["precision_at_k"] == 1.0 and quality["topk_share"] == pytest.approx(7 / 10.5)
    assert spearman(np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)


def test_layer_report_joins_outcomes(verified):
    engine, pair, _, sets, screen = verified
    table = screen_table([screen], {pair.pair_id: sets})
    outcomes = pd.DataFrame([{"pair_id": pair.pair_id, "metric": m, "y_benign": screen.y_benign[m],
                              "y_harmful": screen.y_harmful[m]} for m in METRICS])
    report = layer_report(table, outcomes, SETTINGS.top_k, engine.sites.n_layers)
    assert len(report) == len(METRICS) * len(sets) * engine.sites.n_layers
    final = report[report["layer"] == engine.sites.n_layers - 1]
    assert final["precision_at_k"].between(0, 1).all() and final["topk_share"].between(0, 1).all()
    assert (report["te"] == report["y_harmful"] - report["y_benign"]).all()


def test_best_block_finds_the_heaviest_window():
    scores = np.array([0.0, 1, -5, 2, 2, 2, 0, 1])
    assert best_block(scores, 3) == 3
    assert best_block(scores, 1) == 3


def test_heldout_rows_whole_layer_equals_the_mlp_patch(verified):
    engine, pair, runs, _, screen = verified
    harmful, benign = runs
    selections = heldout_selections(discovery_ranking([screen], "all"), SETTINGS, seed=0)
    rows = pd.DataFrame(heldout_rows(engine, pair, runs, selections, SETTINGS))
    per_layer = len(METRICS) * (len(SETTINGS.k_grid) + 1 + 1) + SETTINGS.random_draws * 3 + 1  # grid + B
    assert len(selections) == engine.sites.n_layers * per_layer
    everywhere = position_sets(pair)["all"]
    for layer in range(engine.sites.n_layers):
        mlp = engine.patch(benign, harmful, [(Patch("mlp", layer, everywhere),)], fast=False)[0]
        whole = rows[(rows["layer"] == layer) & (rows["selection"] == "layer")].set_index("metric")
        for m_index, metric in enumerate(METRICS):
            assert whole.loc[metric, "y_patched"] == pytest.approx(mlp[m_index], abs=1e-5)
            assert whole.loc[metric, "share"] == pytest.approx(whole.loc[metric, "effect"] / whole.loc[metric, "te"])
    blocks = rows[rows["selection"] == "block"]
    assert (blocks["k"] == SETTINGS.block_size).all() and blocks["units"].str.contains(":").all()
    summary = heldout_summary(rows)
    assert set(summary["selection"]) == {"top", "block", "random", "layer"}


def test_per_position_sets_cover_the_asked_layers():
    settings = ScreenSettings(**{**SETTINGS.__dict__, "per_position_layers": (-1,)})
    sets = screen_sets(make_pair(), settings, 4)
    singles = [s for s in sets if s.name.isdigit()]
    assert [s.positions for s in singles] == [(q,) for q in range(len(PROMPT))]
    assert all(s.layers == (3,) for s in singles) and sets[0] == PositionSet("all", tuple(range(len(PROMPT))),
                                                                              (0, 1, 2, 3))
    with pytest.raises(ValueError, match="per_position_layers"):
        screen_sets(make_pair(), ScreenSettings(**{**SETTINGS.__dict__, "per_position_layers": (4,)}), 4)


def test_positions_outside_either_run_are_refused():
    from harmmed.patching.attribution import activation_deltas

    engine = MediationEngine(tiny_model("llama"), refusal_ids=[3])
    harmful, benign = runs_of(engine, make_pair())
    with pytest.raises(ValueError, match="not prompt positions"):
        activation_deltas(benign, harmful, [len(PROMPT)], engine.sites.n_layers)


def test_unknown_position_set_names_the_key():
    settings = ScreenSettings(**{**SETTINGS.__dict__, "positions": ("all", "middle")})
    with pytest.raises(ValueError, match="screen.positions"):
        screen_sets(make_pair(), settings, 4)


def test_gradients_leave_the_model_unchanged():
    model = tiny_model("llama")
    engine = MediationEngine(model, refusal_ids=[3])
    _, benign = runs_of(engine, make_pair())
    before = [p.requires_grad for p in model.parameters()]
    clean = engine.run(make_pair().benign_ids, TARGET).target_logprobs  # one row, as after (batched runs round otherwise)
    saved = benign.target_logprobs.clone()
    unit_gradients(engine, benign)
    assert torch.equal(benign.target_logprobs, saved)  # the run it differentiates is not changed in place
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(engine.run(make_pair().benign_ids, TARGET).target_logprobs, clean)


def test_gpu_benchmark_script_runs_its_path_on_a_tiny_shape():
    """bench/screen_gpu.py builds its model, screens every unit and checks the sample exactly;
    on a tiny shape on the CPU the rank agreement must be near perfect."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "screen_gpu.py"
    spec = importlib.util.spec_from_file_location("screen_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.main(["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--repeats", "1"])
    row = next(line for line in text.splitlines() if line.startswith("| tiny random"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "3 x 96"
    pooled = float(cells[8].split("/")[0])
    assert pooled > 0.9
