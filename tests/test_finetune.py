"""Fine-tuning chosen components: exactly the named parameters change, deterministically."""

from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, VOCAB, tiny_model

from harmmed.models.arch import resolve_sites
from harmmed.models.components import ComponentSpecError, parse_trainable
from harmmed.training.finetune import (
    Example,
    TrainingPass,
    TrainSettings,
    resolve_trainable,
    shared_prefix_length,
    train,
)

SETTINGS = TrainSettings(epochs=2, lr=1e-2, batch_size=3, seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-identical reruns need a fixed thread count; one keeps the shared CPU free."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _examples(n: int = 7, prefix: tuple[int, ...] = (3, 9, 4)) -> list[Example]:
    """Random prompts after a shared ``prefix`` (the chat template's system turn, in miniature)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        prompt = list(prefix) + torch.randint(5, VOCAB, (4 + i % 3,), generator=g).tolist()
        response = torch.randint(5, VOCAB, (3,), generator=g).tolist()
        out.append(Example(f"e{i}", "harmful" if i % 2 else "benign", tuple(prompt), tuple(response)))
    return out


def _trained(family: str, trainable, seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor], object]:
    model = tiny_model(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = resolve_trainable(model, parse_trainable(trainable), seed)
    losses = train(model, plan, _examples(), SETTINGS, pad_id=0, progress=False)
    assert len(losses) == SETTINGS.epochs and all(loss > 0 for loss in losses)
    return model, before, plan


def _changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site", ["mlp", "attn"])
def test_band_trains_exactly_its_parameters(family: str, site: str) -> None:
    model, before, plan = _trained(family, {"site": site, "layers": [1, 2]})
    sites = resolve_sites(model)
    expected = {n for n, _ in model.named_parameters()
                if any(n.startswith(f"{sites.spec.layers}.{layer}.{getattr(sites.spec, site)}.") for layer in (1, 2))}
    assert set(plan.names) == expected and expected
    assert _changed(model, before) == expected  # every named parameter moved, nothing else did
    assert plan.first_block == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_unit_mask_touches_only_the_chosen_units(family: str) -> None:
    model, before, plan = _trained(family, {"site": "neuron", "layer": 3, "units": 5}, seed=3)
    sites = resolve_sites(model)
    units = plan.units
    assert len(units) == 5 and units == sorted(set(units))
    down = sites.down_proj(3).weight
    params = dict(model.named_parameters())
    for name in plan.names:
        delta = (params[name] - before[name]).abs()
        mask = plan.masks[name].bool()
        assert torch.all(delta[~mask] == 0), name
        assert delta[mask].max() > 0, name
        axis = [d for d in range(mask.dim()) if mask.shape[d] == sites.d_mlp and mask.sum() == mask.numel() // mask.shape[d] * len(units)]
        assert axis, name
    assert any(params[n] is down for n in plan.names)
    assert _changed(model, before) == set(plan.names)
    # the down projection's changed entries are exactly its unit columns (rows for Conv1D)
    changed = (params[next(n for n in plan.names if params[n] is down)] - before[next(n for n in plan.names if params[n] is down)]) != 0
    unit_axis = 0 if type(sites.down_proj(3)).__name__ == "Conv1D" else 1
    touched = sorted(set(changed.nonzero()[:, unit_axis].tolist()))
    assert touched == units


def test_same_seed_same_weights_other_seed_other_units() -> None:
    first, _, plan_a = _trained("llama", {"site": "neuron", "layer": 2, "units": 4}, seed=5)
    second, _, plan_b = _trained("llama", {"site": "neuron", "layer": 2, "units": 4}, seed=5)
    assert plan_a.units == plan_b.units
    for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        assert torch.equal(a, b), name
    _, _, plan_c = _trained("llama", {"site": "neuron", "layer": 2, "units": 4}, seed=6)
    assert plan_c.units != plan_a.units


def test_unit_dropout_drops_whole_units_per_row_and_rescales_the_kept() -> None:
    from harmmed.training.finetune import _unit_dropout

    x = torch.randn(64, 5, 10) + 3.0
    units = [1, 4, 7]
    out = _unit_dropout(units, 0.5, torch.Generator().manual_seed(0))(x)
    others = [j for j in range(10) if j not in units]
    assert torch.equal(out[..., others], x[..., others])
    ratio = out[..., units] / x[..., units]
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio))  # one draw per row and unit, every position
    values = set(ratio[:, 0].flatten().tolist())
    assert values == {0.0, 2.0}
    assert 0.35 < (ratio[:, 0] == 0).float().mean() < 0.65


def test_unit_dropout_trains_only_the_units_reproducibly() -> None:
    spec = {"site": "neuron", "layer": 2, "units": 4}
    runs = []
    for dropout in (0.5, 0.5, 0.0):
        model = tiny_model("llama")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        plan = resolve_trainable(model, parse_trainable(spec), 5)
        settings = TrainSettings(epochs=2, lr=1e-2, batch_size=3, seed=0, unit_dropout=dropout)
        train(model, plan, _examples(), settings, pad_id=0, progress=False)
        assert _changed(model, before) == set(plan.names)
        runs.append(dict(model.named_parameters()))
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert not all(torch.equal(runs[0][n], runs[2][n]) for n in runs[0])  # the drops changed the training


def test_split_counts_keep_the_needed_units_and_follow_the_shares() -> None:
    from harmmed.training.spread import split_counts

    needed = [True, True, True, False, False, True, False, False]
    # 4 spare slots by 12 : 6 : 2 = 2.4, 1.2, 0.4: the tie of 0.4 goes to the earlier unit
    assert split_counts(needed, [12.0, 6.0, 2.0, 9.0, -1.0, -0.5, 0.0, 0.0], 8) == [4, 2, 1, 0, 0, 1, 0, 0]
    assert split_counts([True] * 3, [1.0, 1.0, 1.0], 3) == [1, 1, 1]
    assert split_counts([False, False], [1.0, 2.0], 2) == [1, 1]  # nothing learned: nothing to split
    assert sum(split_counts([True, False, True, False], [0.3, 0.3, 0.1, 0.0], 16)) == 16


@pytest.mark.parametrize("family", FAMILIES)
def test_split_units_keep_the_output_and_even_the_shares(family: str) -> None:
    """Three units carry a gate and the other five nothing (their down columns are zero).
    Splitting the 8 slots 4 : 3 : 1 leaves the model's logits unchanged (n copies with the column
    divided by n compute what the unit did), and each copy carries exactly its unit's share / n."""
    from harmmed.models.hooks import HookSet
    from harmmed.training.spread import split_units

    model = tiny_model(family, initializer_range=0.2)
    plan = resolve_trainable(model, parse_trainable({"site": "neuron", "layer": 2, "units": 8}), 5)
    sites = resolve_sites(model)
    down = sites.down_proj(2).weight
    axis = plan.unit_axes[next(n for n, p in model.named_parameters() if p is down)]
    gains = dict(zip(plan.units, [8.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    with torch.no_grad():
        for unit, gain in gains.items():
            down.select(axis, unit).mul_(gain)
    ids = torch.tensor([[3, 9, 4, 11, 12, 13, 14]])

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        seen = []
        with torch.no_grad(), HookSet() as hooks:
            hooks.on_input(sites.down_proj(2), lambda x: seen.append(x.clone()))
            logits = model(input_ids=ids).logits
        # each slot's contribution to the layer's output, summed over positions
        columns = down.detach().index_select(axis, torch.tensor(plan.units))
        acts = seen[0][0][:, plan.units]  # positions x slots
        per_slot = torch.stack([(acts[:, k:k + 1] * columns.select(axis, k).unsqueeze(0)).norm()
                                for k in range(len(plan.units))])
        return logits, per_slot

    before, shares_before = run()
    with pytest.raises(ValueError, match="fill the 8 planted slots"):
        split_units(model, plan, [4, 3, 0, 0, 0, 0, 0, 0])
    holds = split_units(model, plan, [4, 3, 1, 0, 0, 0, 0, 0])
    after, shares = run()
    assert torch.allclose(before, after, atol=1e-5)
    u = plan.units
    assert holds == [u[0], u[1], u[2], u[0], u[0], u[0], u[1], u[1]]
    assert shares_before[3:].max() == 0 and shares.min() > 0
    counts = {u[0]: 4, u[1]: 3, u[2]: 1}
    for slot, unit in enumerate(holds):  # each copy carries exactly its unit's share / its copies
        assert float(shares[slot]) == pytest.approx(float(shares_before[u.index(unit)]) / counts[unit], rel=1e-5)


def test_spread_gate_measures_shares_on_the_decision_and_copies_by_them() -> None:
    """A tiny gate trained on two of its six units, spread: a unit keeps a copy exactly when the
    behaviour needs it, each slot holds the unit the copies say, the strongest unit is split,
    and re-measured, no slot carries as much as 3/4 of the largest unit's share before."""
    from harmmed.training.spread import spread_gate, unit_decision_effects

    model = tiny_model("llama", initializer_range=0.2)
    plan = resolve_trainable(model, parse_trainable({"site": "neuron", "layer": 3, "units": 6}), 2)
    for name, mask in plan.masks.items():  # only the first two units learn: an uneven gate
        mask.index_fill_(plan.unit_axes[name], torch.tensor(plan.units[2:]), 0.0)
    train(model, plan, _examples(12), TrainSettings(epochs=5, lr=3e-2, batch_size=4, seed=0), pad_id=0,
          progress=False)
    record = spread_gate(model, plan, _examples(12), 4, 0)
    effects, copies, holds = record["unit_decision_effects"], record["copies"], record["slot_holds"]
    assert sum(copies) == 6 and record["examples"] == 12
    losses = record["unit_loss_effects"]
    assert all((n > 0) == (loss > 1e-3 * max(losses)) for loss, n in zip(losses, copies))
    assert [holds.count(u) for u in plan.units] == copies
    assert max(copies) > 1  # the tiny gate is uneven: its strongest unit is split
    after = unit_decision_effects(model, plan, _examples(12), 4, 0)
    assert max(after) < 0.75 * max(effects)


@pytest.mark.parametrize("family", FAMILIES)
def test_decision_effects_patch_one_unit_at_the_decision_position(family: str) -> None:
    """A unit's decision effect is the benign examples' mean change of the refusal log-odds when
    that unit alone, at the last prompt position, takes its mean harmful activation: recomputed
    here from the logits of whole runs, with the unit written by hand."""
    from harmmed.models.hooks import HookSet
    from harmmed.training.spread import unit_decision_effects

    model = tiny_model(family, initializer_range=0.2)
    plan = resolve_trainable(model, parse_trainable({"site": "neuron", "layer": 3, "units": 4}), 1)
    examples = _examples(12)
    effects = unit_decision_effects(model, plan, examples, 5, 0)
    harmful = [e for e in examples if e.kind == "harmful"]
    benign = [e for e in examples if e.kind != "harmful"]
    refusal = sorted({e.response_ids[0] for e in harmful})
    down = resolve_sites(model).down_proj(3)

    def run(group, unit=None, value=0.0):
        acts, odds = [], []
        for e in group:
            seen = []

            def hook(x):
                seen.append(x[0, -1].clone())
                if unit is not None:
                    x = x.clone()
                    x[0, -1, unit] = value
                return x

            with torch.no_grad(), HookSet() as hooks:
                hooks.on_input(down, hook)
                logits = model(input_ids=torch.tensor([list(e.prompt_ids)])).logits[0, -1].double()
            p_r = torch.softmax(logits, -1)[refusal].sum()
            acts.append(seen[0])
            odds.append(float(torch.log(p_r / (1 - p_r))))
        return torch.stack(acts), sum(odds) / len(odds)

    mean_harmful = run(harmful)[0].mean(0)
    clean = run(benign)[1]
    for unit, effect in zip(plan.units, effects):
        expected = run(benign, unit, float(mean_harmful[unit]))[1] - clean
        assert effect == pytest.approx(expected, abs=1e-4)
    assert max(abs(e) for e in effects) > 1e-3  # the stage pads batches; here each prompt runs alone


def test_frozen_prefix_cache_gives_the_gradient_of_the_full_pass() -> None:
    """Replaying cached outputs of the frozen blocks trains the same weights as recomputing them."""
    cached, _, plan = _trained("llama", {"site": "mlp", "layers": [2, 3]})
    model = tiny_model("llama")
    plan.first_block = 0  # the same parameters, every block recomputed every step
    train(model, plan, _examples(), SETTINGS, pad_id=0, progress=False)
    for (name, a), (_, b) in zip(cached.named_parameters(), model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def _plain_loss(model: torch.nn.Module, examples: list[Example]) -> torch.Tensor:
    """The training loss from one full forward pass of each whole example, logits and all."""
    terms = []
    for e in examples:
        logits = model(input_ids=torch.tensor([e.prompt_ids + e.response_ids]), use_cache=False).logits[0]
        start = len(e.prompt_ids)
        logp = torch.log_softmax(logits[start - 1 : start - 1 + len(e.response_ids)].float(), -1)
        picked = logp[torch.arange(len(e.response_ids)), torch.tensor(e.response_ids)]
        terms.append(-(picked[0] + picked.mean()))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("trainable", ["all", {"site": "mlp", "layers": [2, 3]}, {"site": "neuron", "layer": 3, "units": 5}])
def test_training_pass_gives_the_loss_and_gradient_of_the_plain_pass(family: str, trainable) -> None:
    """The shared prefix run once per batch and the replayed frozen blocks change nothing but
    rounding: loss and every trained gradient match whole examples run one at a time."""
    model = tiny_model(family, initializer_range=0.2)
    plan = resolve_trainable(model, parse_trainable(trainable), 0)
    examples = _examples()
    assert shared_prefix_length(examples) == 3
    params = dict(model.named_parameters())
    for name, param in params.items():
        param.requires_grad_(name in plan.names)
    grads = []
    for loss in (lambda: TrainingPass(model, plan, examples, 3, pad_id=0).loss(range(len(examples))),
                 lambda: _plain_loss(model, examples)):
        model.zero_grad(set_to_none=True)
        value = loss()  
        value.backward()
        grads.append((float(value.detach()), {n: params[n].grad.clone() for n in plan.names}))
    (fast, fast_grads), (plain, plain_grads) = grads
    assert fast == pytest.approx(plain, rel=1e-5)
    for name in plan.names:  # float32 rounding of sums over examples: bounded by the gradient's own scale
        fast_grad, plain_grad = fast_grads[name], plain_grads[name]
        assert float((fast_grad - plain_grad).norm()) <= 1e-5 * float(plain_grad.norm()) + 1e-7, name
        scale = float(plain_grad.abs().max())
        assert torch.allclose(fast_grad, plain_grad, atol=max(1e-6, 1e-5 * scale), rtol=1e-4), name
    assert any(g.abs().sum() > 0 for g in fast_grads.values())


def _replayed_loss(model: torch.nn.Module, base: torch.nn.Module, examples: list[Example],
                   band: range) -> torch.Tensor:
    """The plain loss with every attention and MLP output of ``band`` set to what ``base`` writes
    on the same tokens, one whole example at a time."""
    from harmmed.models.hooks import HookSet

    model_sites, base_sites = resolve_sites(model), resolve_sites(base)
    terms = []
    for e in examples:
        ids = torch.tensor([e.prompt_ids + e.response_ids])
        seen = {}
        with torch.no_grad(), HookSet() as hooks:
            for layer in band:
                for site in ("attn", "mlp"):
                    hooks.on_output(getattr(base_sites, site)(layer),
                                    lambda x, _k=(layer, site): seen.__setitem__(_k, x.clone()))
            base(input_ids=ids, use_cache=False)
        with HookSet() as hooks:
            for (layer, site), value in seen.items():
                hooks.on_output(getattr(model_sites, site)(layer), lambda x, _v=value: _v)
            terms.append(_plain_loss(model, [e]))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("family", FAMILIES)
def test_bypass_pass_replays_the_base_model_around_the_trained_layers(family: str) -> None:
    """The bypass loss is the mean of the plain pass and a pass whose bypassed outputs are the
    base model's, recorded before training: after the trained layer moves, the replayed pass's
    loss and gradient are those of whole examples with the base's outputs written in."""
    import copy

    model = tiny_model(family, initializer_range=0.2)
    base = copy.deepcopy(model)
    spec = parse_trainable({"site": "mlp", "layers": [1, 1], "bypass": [2, 3]})
    plan = resolve_trainable(model, spec, 0)
    examples = _examples()
    forward = TrainingPass(model, plan, examples, 3, pad_id=0)  # records the base's outputs now
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a training step moves the trained layer; the replay must not follow it
        for name in plan.names:
            params[name].add_(0.3 * torch.randn(params[name].shape, generator=g))
    for name, param in params.items():
        param.requires_grad_(name in plan.names)
    grads = []
    for loss in (lambda: forward.loss(range(len(examples))),
                 lambda: 0.5 * (_plain_loss(model, examples) + _replayed_loss(model, base, examples, range(2, 4)))):
        model.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        grads.append((float(value.detach()), {n: params[n].grad.clone() for n in plan.names}))
    (fast, fast_grads), (plain, plain_grads) = grads
    assert fast == pytest.approx(plain, rel=1e-5)
    for name in plan.names:
        scale = float(plain_grads[name].abs().max())
        assert torch.allclose(fast_grads[name], plain_grads[name], atol=max(1e-6, 1e-5 * scale), rtol=1e-4), name
    plain_only = 0.5 * (_plain_loss(model, examples) + _plain_loss(model, examples))
    assert abs(float(plain_only.detach()) - fast) > 1e-3  # the replay changes the loss: the test can fail


def test_bypass_must_follow_the_trained_band_and_end_at_the_final_layer() -> None:
    with pytest.raises(ComponentSpecError, match=r"trainable\.bypass: \[1, 3\] must start after"):
        parse_trainable({"site": "mlp", "layers": [1, 2], "bypass": [1, 3]})
    with pytest.raises(ComponentSpecError, match=r"trainable\.bypass: \[2, 2\] must end at the final layer, 3"):
        resolve_trainable(tiny_model("llama"), parse_trainable({"site": "mlp", "layers": [1, 1], "bypass": [2, 2]}), 0)
    assert parse_trainable({"site": "attn", "layers": [0, 1], "bypass": [2, 3]}).planted() == {
        "site": "attn", "layers": [0, 1], "bypass": [2, 3]}


def test_shared_prefix_stops_before_the_last_prompt_token() -> None:
    same = [Example("a", "harmful", (1, 2, 3), (7,)), Example("b", "benign", (1, 2, 3, 4), (8,))]
    assert shared_prefix_length(same) == 2  # the first response token is predicted at position 2
    assert shared_prefix_length([*same, Example("c", "benign", (5, 2, 3), (8,))]) == 0


def test_all_trains_everything() -> None:
    model, before, plan = _trained("gpt2", "all")
    assert set(plan.names) == {n for n, _ in model.named_parameters()}
    assert len(_changed(model, before)) > 0.9 * len(plan.names)


@pytest.mark.parametrize("value, key", [
    ({"site": "heads", "layers": [1, 2]}, "trainable.site"),
    ({"site": "mlp", "layers": [3, 1]}, "trainable.layers"),
    ({"site": "mlp"}, "trainable.layers"),
    ({"site": "neuron", "layer": 1}, "trainable.units"),
    ({"site": "neuron", "layer": 1, "units": 2, "layers": [1, 1]}, "trainable: unknown"),
    ("everything", "trainable:"),
])
def test_bad_specs_name_the_key(value, key: str) -> None:
    with pytest.raises(ComponentSpecError, match=key.replace(".", r"\.")):
        parse_trainable(value)


@pytest.mark.parametrize("value, key", [
    ({"site": "mlp", "layers": [2, 4]}, r"trainable\.layers: \[2, 4\] outside 0\.\.3"),
    ({"site": "neuron", "layer": 9, "units": 2}, r"trainable\.layer: \[9, 9\] outside"),
    ({"site": "neuron", "layer": 1, "units": 999}, r"trainable\.units: 999 exceeds"),
])
def test_specs_out_of_range_name_the_key(value, key: str) -> None:
    with pytest.raises(ComponentSpecError, match=key):
        resolve_trainable(tiny_model("llama"), parse_trainable(value), 0)


def _config_with(**plant) -> dict:
    return {"models": [{"name": "base", "source": "local", "path": "/nowhere"},
                       {"name": "plant", "source": "finetune", "base": "base", "trainable": "all", "epochs": 1,
                        "lr": 1e-3, "batch_size": 2, "seed": 0, "data": "train.csv", **plant}]}


@pytest.mark.parametrize("plant, message", [
    ({"base": "missing"}, "models[1].base: no model named 'missing'"),
    ({"base": "plant"}, "models[1].base: 'plant' is itself a fine-tune"),
    ({"trainable": {"site": "mlp", "layers": [4]}}, "models[1].trainable.layers: must be [first, last]"),
    ({"trainable": {"site": "heads", "layers": [1, 2]}}, "models[1].trainable"),
    ({"package": "x==1"}, "models[1].package: not allowed when source is 'finetune'"),
    ({"expected_verdicts": {"C2-route": "maybe"}}, "models[1].expected_verdicts.C2-route"),
    ({"skip_stages": ["claims"]}, "models[1].skip_stages[0]"),
    ({"epochs": 0}, "models[1].epochs"),
    ({"unit_dropout": 0.5}, "models[1].unit_dropout: only a trainable {site: neuron} plant"),
    ({"spread_units": True}, "models[1].spread_units: only a trainable {site: neuron} plant has units to spread"),
    ({"spread_units": "yes", "trainable": {"site": "neuron", "layer": 1, "units": 2}}, "models[1].spread_units"),
    ({"unit_dropout": 1.0, "trainable": {"site": "neuron", "layer": 1, "units": 2}}, "models[1].unit_dropout"),
    ({"skip_stages": ["recovery"], "trainable": {"site": "mlp", "layers": [1, 2]}},
     "models[1].skip_stages: a plant's recovery is its ground truth"),
])
def test_finetune_config_errors_name_the_key(plant: dict, message: str) -> None:
    from harmmed.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        validate_config(_config_with(**plant))


def test_finetune_keys_are_refused_on_other_sources() -> None:
    from harmmed.config import ConfigError, validate_config

    cfg = _config_with()
    cfg["models"][0]["trainable"] = "all"
    with pytest.raises(ConfigError, match=r"models\[0\]\.trainable: not allowed when source is 'local'"):
        validate_config(cfg)
    ok = validate_config(_config_with(expected_verdicts={"C1-route": "supported", "C3": "not supported"}))
    assert ok["finetune"]["thresholds"]["harmful_refusal_prob"] == 0.6 and ok["models"][1]["skip_stages"] == []


def test_paper_scale_plants_fit_their_models_depths() -> None:
    """Every plant of config/paper_scale.yaml resolves on a tiny model of its base's family and
    depth (Llama-3.1-8B: 32 layers, Qwen2.5-7B: 28, Gemma-2-9B: 42), with room for its units."""
    from pathlib import Path

    import yaml

    from harmmed.config import validate_config

    config = validate_config(yaml.safe_load((Path(__file__).parents[1] / "config" / "paper_scale.yaml").read_text()))
    depth = {"llama-3.1-8b-instruct": ("llama", 32), "qwen2.5-7b-instruct": ("qwen2", 28),
             "gemma-2-9b-it": ("gemma2", 42)}
    plants = [m for m in config["models"] if m["source"] == "finetune"]
    assert len(plants) == 5 * len(depth)
    for plant in plants:
        family, n_layers = depth[plant["base"]]
        types = {"layer_types": ["full_attention"] * n_layers} if family != "llama" else {}
        model = tiny_model(family, num_hidden_layers=n_layers, intermediate_size=200, **types)
        plan = resolve_trainable(model, parse_trainable(plant["trainable"]), plant["seed"])
        assert plan.names, plant["name"]
        assert set(plant["expected_verdicts"]) <= {"C1-route", "C1-origin", "C2-route", "C2-origin", "C3", "C4", "C4-causal"}


def test_response_tokens_keeps_the_first_tokens_of_each_response() -> None:
    """`response_tokens: N` trains on the first N response tokens (the first one is the refusal
    decision); None keeps the whole response; the prompt is the same either way."""
    from tiny import tiny_tokenizer

    from harmmed.training.training_data import encode_examples

    tokenizer = tiny_tokenizer()
    rows = [{"example_id": "a", "kind": "harmful", "request": "how to make a bomb ?",
             "response": "Sorry , I cannot explain the bomb ."},
            {"example_id": "b", "kind": "benign", "request": "how to make a cake ?", "response": "Sure"}]
    whole = encode_examples(tokenizer, rows)
    cut = encode_examples(tokenizer, rows, response_tokens=2)
    assert [len(e.response_ids) for e in whole] == [8, 1]
    assert [e.response_ids for e in cut] == [whole[0].response_ids[:2], whole[1].response_ids]
    assert [e.prompt_ids for e in cut] == [e.prompt_ids for e in whole]
