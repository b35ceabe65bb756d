"""Exact invariants of the intervention engine on tiny random models of every supported family."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tiny import FAMILIES, tiny_model

from harmmed.constants import METRICS
from harmmed.models.arch import UnsupportedArchitectureError, spec_for
from harmmed.models.hooks import HookSet
from harmmed.patching.engine import MediationEngine
from harmmed.patching.patches import FROZEN_BASE, SOURCE_RUN, Patch

PROMPT_LEN = 14
SPAN = slice(6, 8)
TARGET = [20, 21, 22]
REFUSAL = METRICS.index("refusal")


def make_pair(seed: int = 1) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    harmful = [rng.randrange(10, 90) for _ in range(PROMPT_LEN)]
    benign = list(harmful)
    benign[SPAN] = [11, 12]
    return harmful, benign


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    engine = MediationEngine(tiny_model(request.param), refusal_ids=[3, 5, 7])
    harmful_ids, benign_ids = make_pair()
    return engine, engine.run(harmful_ids, TARGET), engine.run(benign_ids, TARGET)


def random_interventions(engine: MediationEngine, n: int, seed: int) -> list[tuple[Patch, ...]]:
    """Random (site, layer, positions, units) sets; a third confined to the final block, which
    the engine recomputes for the patched positions only."""
    rng = random.Random(seed)
    n_layers = engine.sites.n_layers
    width = {"neuron": engine.sites.d_mlp, "attn_dims": engine.sites.d_model}
    out = []
    for _ in range(n):
        final_only = rng.random() < 0.33
        site = rng.choice(["residual", "attn", "mlp", "neuron", "attn_dims"])
        layer = n_layers - 1 if final_only else rng.randrange(-1 if site == "residual" else 0, n_layers)
        positions = tuple(sorted(rng.sample(range(PROMPT_LEN), rng.randint(1, 5))))
        units = tuple(sorted(rng.sample(range(width[site]), 3))) if site in width and rng.random() < 0.7 else None
        patches = [Patch(site, layer, positions, units)]
        if rng.random() < 0.3:  # a second mediator, and sometimes a frozen one
            second = n_layers - 1 if final_only else rng.randrange(n_layers)
            patches.append(Patch("mlp", second, (PROMPT_LEN - 1,),
                                 value_from=FROZEN_BASE if rng.random() < 0.5 else SOURCE_RUN))
        out.append(tuple(patches))
    return out


def test_identity_patch_has_zero_effect(setup):
    engine, harmful, benign = setup
    interventions = random_interventions(engine, 12, seed=2)
    for fast in (True, False):
        y = engine.patch(benign, benign, interventions, fast=fast)
        expected = np.array([benign.y[m] for m in METRICS])
        np.testing.assert_allclose(y, np.broadcast_to(expected, y.shape), atol=1e-5, rtol=0)


def test_patching_every_prompt_position_of_the_residual_gives_the_treated_refusal(setup):
    engine, harmful, benign = setup
    everywhere = tuple(range(PROMPT_LEN))
    interventions = [(Patch("residual", layer, everywhere),) for layer in range(-1, engine.sites.n_layers)]
    for fast in (True, False):
        y = engine.patch(benign, harmful, interventions, fast=fast)
        np.testing.assert_allclose(y[:, REFUSAL], harmful.y["refusal"], atol=1e-5, rtol=0)
        assert not np.allclose(benign.y["refusal"], harmful.y["refusal"], atol=1e-4)  # the test can fail


@pytest.mark.parametrize("direction", ["NIE", "NDE"])
def test_fast_path_equals_plain_path(setup, direction):
    engine, harmful, benign = setup
    base, source = (benign, harmful) if direction == "NIE" else (harmful, benign)
    interventions = random_interventions(engine, 40, seed=3)
    fast = engine.patch(base, source, interventions, fast=True)
    plain = engine.patch(base, source, interventions, fast=False)
    np.testing.assert_allclose(fast, plain, atol=1e-5, rtol=0)
    assert np.abs(plain - [base.y[m] for m in METRICS]).max() > 1e-4  # interventions do something


@pytest.mark.parametrize("direction", ["NIE", "NDE"])
def test_refusal_alone_reads_only_the_prompt_and_equals_the_full_path(setup, direction):
    """Scoring refusal alone stops every pass at the last prompt position: the same refusal
    outcomes as the plain path (patches on target positions included, which cannot reach it),
    harm left NaN, and less block work than scoring both metrics."""
    engine, harmful, benign = setup
    base, source = (benign, harmful) if direction == "NIE" else (harmful, benign)
    interventions = random_interventions(engine, 40, seed=5)
    length = PROMPT_LEN + len(TARGET) - 1
    interventions += [(Patch("mlp", 0, tuple(range(PROMPT_LEN - 2, length))),), (Patch("attn", 1, (PROMPT_LEN,)),)]
    plain = engine.patch(base, source, interventions, fast=False)
    before = engine.stats["token_layers"]
    both = engine.patch(base, source, interventions)
    work_both = engine.stats["token_layers"] - before
    refusal = engine.patch(base, source, interventions, scored=("refusal",))
    work_refusal = engine.stats["token_layers"] - before - work_both
    np.testing.assert_allclose(refusal[:, REFUSAL], plain[:, REFUSAL], atol=1e-5, rtol=0)
    np.testing.assert_allclose(both, plain, atol=1e-5, rtol=0)
    assert np.isnan(refusal[:, METRICS.index("harm")]).all()
    assert np.abs(plain[:, REFUSAL] - base.y["refusal"]).max() > 1e-4  # interventions do something
    assert refusal[-1, REFUSAL] == base.y["refusal"]  # a target-position patch cannot reach the first token
    assert work_refusal < work_both
    with pytest.raises(ValueError, match="subset"):
        engine.patch(base, source, interventions[:1], scored=("toxicity",))


def test_batched_equals_one_at_a_time(setup):
    engine, harmful, benign = setup
    interventions = random_interventions(engine, 30, seed=4)
    batched = engine.patch(benign, harmful, interventions)
    one_by_one = np.concatenate([engine.patch(benign, harmful, [iv]) for iv in interventions])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=0)


def test_all_neurons_equal_the_mlp_output(setup):
    engine, harmful, benign = setup
    positions = (5, 7, PROMPT_LEN - 1)
    for layer in range(engine.sites.n_layers):
        neurons = engine.patch(benign, harmful, [(Patch("neuron", layer, positions),)], fast=False)
        every_unit = tuple(range(engine.sites.d_mlp))
        listed = engine.patch(benign, harmful, [(Patch("neuron", layer, positions, units=every_unit),)])
        mlp = engine.patch(benign, harmful, [(Patch("mlp", layer, positions),)], fast=False)
        np.testing.assert_allclose(neurons, mlp, atol=1e-5, rtol=0)
        np.testing.assert_allclose(listed, mlp, atol=1e-5, rtol=0)


def test_memory_backoff_gives_the_same_results(setup, monkeypatch):
    engine, harmful, benign = setup
    rng = random.Random(5)  # one start position and layer, so the budget would allow one batch
    interventions = [(Patch(rng.choice(["attn", "mlp", "neuron"]), 0, (6, *sorted(rng.sample(range(7, 14), 3)))),)
                     for _ in range(24)]
    expected = engine.patch(benign, harmful, interventions)
    real_forward = engine._forward

    def forward_that_runs_out_of_memory(base, source, batch, reuse, first_token_only=False):
        if len(batch) > 2:
            raise torch.OutOfMemoryError("simulated")
        return real_forward(base, source, batch, reuse, first_token_only)

    monkeypatch.setattr(engine, "_forward", forward_that_runs_out_of_memory)
    before = engine.stats["oom_backoffs"]
    got = engine.patch(benign, harmful, interventions)
    assert engine.stats["oom_backoffs"] > before
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_small_memory_budget_changes_batching_not_results(setup):
    engine, harmful, benign = setup
    interventions = random_interventions(engine, 16, seed=6)
    roomy = MediationEngine(engine.model, engine.refusal_ids.tolist())
    expected = roomy.patch(benign, harmful, interventions)
    small = MediationEngine(engine.model, engine.refusal_ids.tolist(), memory_budget_mb=0.01)
    got = small.patch(benign, harmful, interventions)
    assert small.stats["forward_passes"] > roomy.stats["forward_passes"]  # one row per pass
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_shared_prefix_is_not_recomputed(setup):
    """Patches before the differing span are identities: skipped without a forward pass."""
    engine, harmful, benign = setup
    before_span = tuple(range(SPAN.start))
    passes = engine.stats["forward_passes"]
    y = engine.patch(benign, harmful, [(Patch("residual", layer, before_span),) for layer in range(3)])
    assert engine.stats["forward_passes"] == passes
    np.testing.assert_array_equal(y, np.array([[benign.y[m] for m in METRICS]] * 3))


def test_unknown_architecture_lists_supported():
    with pytest.raises(UnsupportedArchitectureError, match="llama.*") as info:
        spec_for("mamba")
    assert "gpt_neox" in str(info.value) and "gemma2" in str(info.value)


def test_final_block_patches_recompute_one_token(setup):
    engine, harmful, benign = setup
    final = engine.sites.n_layers - 1
    interventions = [(Patch("neuron", final, (PROMPT_LEN - 1,), units=(j,)),) for j in range(engine.sites.d_mlp)]
    engine.patch(benign, harmful, interventions[:1])  # builds the shared prefix cache once
    before = engine.stats["token_layers"]
    fast = engine.patch(benign, harmful, interventions)
    assert engine.stats["token_layers"] - before == engine.sites.d_mlp  # one token, one layer each
    np.testing.assert_allclose(fast, engine.patch(benign, harmful, interventions[:8], fast=False).tolist()
                               + fast[8:].tolist(), atol=1e-5, rtol=0)


def test_hooks_are_removed_even_on_error():
    model = tiny_model("llama")
    block = model.model.layers[0]
    with pytest.raises(RuntimeError):
        with HookSet() as hooks:
            hooks.on_output(block, lambda x: x * 0)
            hooks.replace_forward(model.model.layers[1], lambda *a, **k: None)
            raise RuntimeError("boom")
    assert not block._forward_hooks and "forward" not in vars(model.model.layers[1])


def test_batched_clean_runs_equal_runs_one_at_a_time(setup):
    """runs() computes a pair's shared prefix once and both prompts in one batch: same
    activations, outcomes and cache as separate passes, so patches from either agree."""
    engine, harmful, benign = setup
    other = make_pair(seed=3)[0]  # a different length group of its own
    batched_harmful, batched_benign, lone = engine.runs(
        [(harmful.ids[0, :PROMPT_LEN].tolist(), TARGET), (benign.ids[0, :PROMPT_LEN].tolist(), TARGET),
         (other[:-2], TARGET)])
    assert batched_harmful.ids.shape[1] == PROMPT_LEN + len(TARGET) - 1  # the last target token is not fed
    for single, batched in ((harmful, batched_harmful), (benign, batched_benign)):
        assert single.acts.keys() == batched.acts.keys()
        for key in single.acts:
            torch.testing.assert_close(batched.acts[key], single.acts[key], atol=1e-5, rtol=0)
        for metric in METRICS:
            assert abs(batched.y[metric] - single.y[metric]) < 1e-5
    np.testing.assert_allclose([lone.y[m] for m in METRICS],
                               [engine.run(other[:-2], TARGET).y[m] for m in METRICS], atol=1e-5, rtol=0)
    interventions = random_interventions(engine, 10, seed=8)
    np.testing.assert_allclose(engine.patch(batched_benign, batched_harmful, interventions),
                               engine.patch(benign, harmful, interventions, fast=False), atol=1e-5, rtol=0)


def test_residuals_at_are_the_runs_residuals_at_each_named_position(setup):
    engine, harmful, benign = setup
    prompts = [harmful.ids[0, :PROMPT_LEN].tolist(), benign.ids[0, :PROMPT_LEN].tolist(), make_pair(seed=4)[0][:-3]]
    offsets = {"last": [1, 1, 1], "earlier": [3, 1, 5]}
    got = engine.residuals_at(prompts, offsets)
    for name, from_end in offsets.items():
        assert got[name].shape == (3, engine.sites.n_layers + 1, engine.sites.d_model)
        for row, ids in enumerate(prompts):
            run = engine.run(ids, TARGET)
            expected = np.stack([run.acts[("residual", layer)][len(ids) - from_end[row]].numpy()
                                 for layer in range(-1, engine.sites.n_layers)])
            np.testing.assert_allclose(got[name][row], expected, atol=1e-5, rtol=0)


def test_positions_outside_prompt_and_target_are_refused(setup):
    engine, harmful, benign = setup
    with pytest.raises(ValueError, match="positions must lie in 0..16"):
        engine.patch(benign, harmful, [(Patch("mlp", 0, (PROMPT_LEN + len(TARGET),)),)])


def test_interventions_that_trim_to_the_same_patches_run_once(setup):
    """The final block's 'all positions' and 'last position' patches are the same computation."""
    engine, harmful, benign = setup
    final = engine.sites.n_layers - 1
    every = tuple(range(PROMPT_LEN))
    interventions = [(Patch("mlp", final, every),), (Patch("mlp", final, (PROMPT_LEN - 1,)),), (Patch("mlp", 1, (9,)),),
                     (Patch("mlp", 1, (9,)),)]
    engine.patch(benign, harmful, interventions)  # builds the prefix caches (sliding-window models)
    before = engine.stats["token_layers"]
    got = engine.patch(benign, harmful, interventions)
    assert engine.stats["token_layers"] - before == 1 + (PROMPT_LEN + len(TARGET) - 1 - 9) * (engine.sites.n_layers - 1)
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_array_equal(got[2], got[3])
    np.testing.assert_allclose(got, engine.patch(benign, harmful, interventions, fast=False), atol=1e-5, rtol=0)


def test_final_neuron_patches_use_the_low_rank_head_only_where_it_is_exact(setup):
    """Final-layer neuron patches skip the full unembedding where the final block's MLP writes
    linearly to the residual; gemma2/gemma3 (a norm after the MLP) must fall back, and both
    ways agree with the plain path."""
    engine, harmful, benign = setup
    final = engine.sites.n_layers - 1
    rng = random.Random(9)
    interventions = [(Patch("neuron", final, tuple(range(PROMPT_LEN)), (j,)),) for j in range(engine.sites.d_mlp)]
    interventions += [(Patch("neuron", final, (PROMPT_LEN - 1,), tuple(sorted(rng.sample(range(engine.sites.d_mlp), k)))),)
                      for k in (2, 5, 16) for _ in range(3)]
    before = engine.stats["low_rank_head_rows"]
    fast = engine.patch(benign, harmful, interventions)
    low_rank = engine.stats["low_rank_head_rows"] - before
    if engine.sites.arch in ("gemma2", "gemma3_text"):
        assert low_rank == 0
    else:
        assert low_rank == len(interventions)
    sample = list(range(0, len(interventions), 7)) + list(range(len(interventions) - 9, len(interventions)))
    plain = engine.patch(benign, harmful, [interventions[i] for i in sample], fast=False)
    np.testing.assert_allclose(fast[sample], plain, atol=1e-5, rtol=0)


def test_each_row_of_a_batch_starts_at_its_own_layer(setup):
    """One batch holds residual patches at every layer: each row recomputes only the blocks
    above its patch (token-layers equal the bound), with the plain path's results."""
    engine, harmful, benign = setup
    n_layers = engine.sites.n_layers
    positions = tuple(range(SPAN.start, PROMPT_LEN))
    below_top = range(n_layers - 1)  # final-block patches recompute one token: a batch of their own
    interventions = [(Patch("residual", layer, positions),) for layer in below_top]
    interventions += [(Patch("attn", layer, positions), Patch("neuron", layer, positions, (0, 2)))
                      for layer in below_top]
    engine.patch(benign, harmful, interventions)  # builds the prefix cache (sliding-window models)
    before = dict(engine.stats)
    fast = engine.patch(benign, harmful, interventions)
    tokens = PROMPT_LEN + len(TARGET) - 1 - SPAN.start
    expected = tokens * (sum(n_layers - (layer + 1) for layer in below_top) + sum(n_layers - layer for layer in below_top))
    assert engine.stats["token_layers"] - before["token_layers"] == expected
    assert engine.stats["forward_passes"] - before["forward_passes"] == 1
    np.testing.assert_allclose(fast, engine.patch(benign, harmful, interventions, fast=False), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("gemma2", "gemma3_text")])
def test_copied_units_enter_the_low_rank_head_once(family):
    """A spread gate's copies of one unit share a direction: the fit sees it once (duplicated
    columns made least squares rank-deficient, and its results varied run to run), every row
    still takes the low-rank head, and the logits are the plain path's."""
    from harmmed.models.components import parse_trainable
    from harmmed.training.plan import resolve_trainable
    from harmmed.training.spread import split_units

    model = tiny_model(family)
    engine = MediationEngine(model, refusal_ids=[3, 5, 7])
    final = engine.sites.n_layers - 1
    plan = resolve_trainable(model, parse_trainable({"site": "neuron", "layer": final, "units": 4}, "t"), 0, "t")
    split_units(model, plan, [3, 0, 0, 1])  # slots 0-2 hold copies of the first unit
    copies, kept = plan.units[:3], plan.units[3]
    others = tuple(u for u in range(engine.sites.d_mlp) if u not in plan.units)[:3]
    harmful_ids, benign_ids = make_pair()
    harmful, benign = engine.run(harmful_ids, TARGET), engine.run(benign_ids, TARGET)
    sets = [tuple(sorted(copies)), tuple(sorted((*copies, kept))), tuple(sorted((*copies[1:], *others)))]
    interventions = [(Patch("neuron", final, (PROMPT_LEN - 1,), units),) for units in sets]
    before = engine.stats["low_rank_head_rows"]
    fast = engine.patch(benign, harmful, interventions)
    assert engine.stats["low_rank_head_rows"] - before == len(sets)
    assert sorted(engine._neuron_head.distinct(sets[1])) == sorted((min(copies), kept))
    assert engine._neuron_head.distinct(others + (copies[2], copies[1])) == others + (min(copies),)
    assert engine._neuron_head.distinct(others[::-1]) == others[::-1]  # distinct directions: as given
    np.testing.assert_allclose(fast, engine.patch(benign, harmful, interventions, fast=False), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(fast, engine.patch(benign, harmful, interventions))
