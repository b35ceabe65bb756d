"""Spreading a trained gate evenly over its units (``spread_units``), without changing what it computes.

A unit copied into n slots of its layer, each copy's down-projection column divided by n,
computes exactly what the unit did; only the units given no slot change the output. Which units
keep a slot, and how many, is measured on training examples (:func:`spread_gate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..models.arch import resolve_sites
from ..models.hooks import HookSet
from .finetune import TrainingPass, _logits, _padded, _stacked, frozen_outputs, replay_blocks
from .plan import TrainablePlan
from .training_data import Example

SPREAD_EXAMPLES = 256  # examples the units' shares are measured on (the first of the training set)
NEEDED_LOSS_FRACTION = 1e-3  # a unit is needed when silencing it raises the loss by this share of the largest rise


@torch.no_grad()
def _decision_pass(model: torch.nn.Module, layer: int, prompts: Sequence[Example], frozen: Sequence[torch.Tensor],
                   pad_id: int, refusal_ids: Sequence[int], patch: tuple[int, float] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer``'s MLP unit activations at each prompt's last position (where the first
    response token, the decision, is predicted) and the refusal log-odds there (log p_R -
    log(1 - p_R), p_R the mass on ``refusal_ids``); ``patch`` = (unit, value) sets that unit's
    activation there first. ``frozen``: each prompt's output of block ``layer`` - 1, replayed
    (only the planted block and the head run)."""
    sites = resolve_sites(model)
    head = model.get_output_embeddings()
    ids, _ = _padded(prompts, pad_id, next(model.parameters()).device)
    last = torch.tensor([len(e.prompt_ids) - 1 for e in prompts])
    rows = torch.arange(len(prompts))
    seen: list[torch.Tensor] = []

    def hook(x: torch.Tensor) -> torch.Tensor | None:
        seen.append(x[rows, last].clone())
        if patch is None:
            return None
        x = x.clone()
        x[rows, last, patch[0]] = patch[1]
        return x

    normed: list[torch.Tensor] = []
    with HookSet() as hooks:
        if layer > 0:
            replay_blocks(hooks, sites, layer, _stacked(list(frozen), ids.shape[1]))
        hooks.on_input(sites.down_proj(layer), hook)
        hooks.on_output(sites.final_norm, normed.append)
        hooks.replace_forward(head, lambda x: x[..., :1])
        model(input_ids=ids, use_cache=False)
    logits = _logits(model, head, normed[0][rows, last]).float()
    log_p = torch.logsumexp(torch.log_softmax(logits, -1)[:, list(refusal_ids)], -1)
    return seen[0], log_p - torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))


def unit_decision_effects(model: torch.nn.Module, plan: TrainablePlan, examples: Sequence[Example], batch_size: int,
                          pad_id: int, progress: bool = False) -> list[float]:
    """Per planted unit, its single-unit interchange effect on the decision: the mean change of
    the refusal log-odds when its activation on benign examples is set to its mean on harmful
    ones. That is what the neuron ranking measures on minimal pairs, read here on training
    examples, which are not pairs. The refusal tokens are the harmful examples' first response
    tokens. The blocks below the planted one run once."""
    layer = plan.first_block
    refusal_ids = sorted({e.response_ids[0] for e in examples if e.kind == "harmful"})
    groups = {kind: [Example(e.example_id, e.kind, e.prompt_ids, ()) for e in examples if (e.kind == "harmful") == kind]
              for kind in (True, False)}
    frozen = {kind: frozen_outputs(model, group, layer - 1, batch_size, pad_id) if layer > 0 else []
              for kind, group in groups.items()}

    def passes(kind: bool, patch: tuple[int, float] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        group = groups[kind]
        return [_decision_pass(model, layer, group[start : start + batch_size],
                               frozen[kind][start : start + batch_size], pad_id, refusal_ids, patch)
                for start in range(0, len(group), batch_size)]

    mean_harmful = torch.cat([acts for acts, _ in passes(True)]).mean(0)
    clean = float(torch.cat([odds for _, odds in passes(False)]).mean())
    effects = []
    for unit in tqdm(plan.units, desc="unit shares", unit="unit", disable=not progress, mininterval=5):
        patched = torch.cat([odds for _, odds in passes(False, (unit, float(mean_harmful[unit])))])
        effects.append(float(patched.mean()) - clean)
    return effects


def _zeroed(unit: int):
    """A down-projection input hook that silences one unit."""
    def hook(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., unit] = 0.0
        return x

    return hook


@torch.no_grad()
def unit_loss_effects(forward: TrainingPass, units: Sequence[int], batch_size: int) -> list[float]:
    """Per unit, how much ``forward``'s loss on its examples rises when that unit alone is
    silenced: whether the trained behaviour needs it, on either kind of prompt. The unit is
    silenced after the shared prompt prefix only (``TrainingPass`` runs the prefix once): exact
    for a gate in the final layer, whose MLP output at the prefix reaches no later position."""
    batches = [list(range(start, min(start + batch_size, len(forward.examples))))
               for start in range(0, len(forward.examples), batch_size)]

    def mean_loss(hook) -> float:
        forward.unit_dropout = hook
        return sum(float(forward.loss(batch)) * len(batch) for batch in batches) / len(forward.examples)

    try:
        whole = mean_loss(None)
        return [mean_loss(_zeroed(unit)) - whole for unit in units]
    finally:
        forward.unit_dropout = None


def split_counts(needed: Sequence[bool], shares: Sequence[float], slots: int) -> list[int]:
    """Copies of each unit: one for every ``needed`` unit, and the remaining slots divided among
    the needed units in proportion to their positive ``shares`` (largest remainders, ties to the
    earlier unit). No needed unit, or more needed units than slots: one each (nothing to split)."""
    keep = np.asarray(needed, dtype=bool)
    if not keep.any() or keep.sum() > slots:
        return [1] * len(needed)
    counts = keep.astype(int)
    positive = np.where(keep, np.clip(np.asarray(shares, dtype=float), 0.0, None), 0.0)
    spare = slots - int(counts.sum())
    if positive.sum() <= 0:
        positive = keep.astype(float)
    quota = positive / positive.sum() * spare
    extra = np.floor(quota).astype(int)
    order = np.argsort(-np.round(quota - extra, 9), kind="stable")  # rounded: float noise breaks no tie
    extra[order[: spare - int(extra.sum())]] += 1
    return (counts + extra).tolist()


@torch.no_grad()
def split_units(model: torch.nn.Module, plan: TrainablePlan, counts: Sequence[int]) -> list[int]:
    """Give each planted unit ``counts[i]`` identical copies among the planted slots, each copy's
    down-projection column divided by that count: n copies of a unit compute exactly what it did,
    so only the units given no copy change the output. Returns, per slot, the unit it now holds."""
    if sum(counts) != len(plan.units) or min(counts) < 0:
        raise ValueError(f"copies {list(counts)} must be non-negative and fill the {len(plan.units)} planted slots")
    params = dict(model.named_parameters())
    down = resolve_sites(model).down_proj(plan.first_block).weight
    free = [slot for slot, n in zip(plan.units, counts) if n == 0]
    source = {slot: slot for slot, n in zip(plan.units, counts) if n > 0}
    for unit, n in zip(plan.units, counts):
        for _ in range(n - 1):
            source[free.pop(0)] = unit
    share = {unit: n for unit, n in zip(plan.units, counts)}
    for name, axis in plan.unit_axes.items():
        tensor = params[name].data
        original = tensor.clone()
        for slot, unit in source.items():
            value = original.select(axis, unit)
            tensor.select(axis, slot).copy_(value / share[unit] if params[name] is down else value)
    return [source[slot] for slot in plan.units]


def spread_gate(model: torch.nn.Module, plan: TrainablePlan, examples: Sequence[Example], batch_size: int,
                pad_id: int) -> dict:
    """Spread a trained gate evenly over its units, and record how.

    Trained free, the first units to pick up the harmful direction take most of the gate and the
    rest stay near zero (docs/known-mechanisms.md), which leaves a recall test little to find;
    balance losses, shared outputs and tied units either failed the behaviour check or did not
    spread it. Here a unit is kept when silencing it raises the first-token loss (the behaviour
    needs it, on either kind of prompt), the slots are divided among the kept units in
    proportion to their share of the decision (``unit_decision_effects``: what the neuron ranking
    reads), and each is copied into its slots (``split_units``). Dividing by the loss alone gave
    copies to units that shape harmful runs but move no benign decision; dividing by the
    decision alone dropped units the harmful refusals need. The behaviour check then runs on
    the spread model."""
    measured = list(examples[:SPREAD_EXAMPLES])
    decisions = [Example(e.example_id, e.kind, e.prompt_ids, e.response_ids[:1]) for e in measured]
    losses = unit_loss_effects(TrainingPass(model, plan, decisions, batch_size, pad_id), plan.units, batch_size)
    shares = unit_decision_effects(model, plan, measured, batch_size, pad_id, progress=True)
    floor = NEEDED_LOSS_FRACTION * max(max(losses), 0.0)  # rounding noise needs no copy
    counts = split_counts([loss > floor for loss in losses], shares, len(plan.units))
    holds = split_units(model, plan, counts)
    return {"examples": len(measured), "unit_loss_effects": [round(e, 6) for e in losses],
            "unit_decision_effects": [round(e, 6) for e in shares], "copies": counts, "slot_holds": holds}
