"""Attribution patching: a first-order estimate of every MLP unit's NIE from one backward pass.

Patching unit j of layer l at positions P (the down-projection input, the engine's ``neuron``
site) moves a metric y by, to first order,

    sum over q in P of (a_source[q, j] - a_base[q, j]) * dy/da[q, j],

with the gradient taken on the base run. One forward and one backward pass per pair and metric
give this for every unit, layer and position at once, where exact patching needs one patched
pass per unit. It is an approximation whose error we measure (``screen``), never a substitute
for the engine's exact rows.

The gradient is taken with respect to a zero tensor added to each down-projection input, so
every path from that activation to y stays in the graph, including the paths through later
MLP units; reading the input itself would not give it a gradient when the weights are frozen.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from ..constants import METRICS
from ..models.hooks import HookSet
from .engine import MediationEngine
from .metrics import outcome_metrics, target_logprobs
from .patches import Run


@contextmanager
def _frozen_parameters(model: torch.nn.Module) -> Iterator[None]:
    """No parameter gradients: only the activations' are wanted, and the graph stays smaller."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def unit_gradients(engine: MediationEngine, base: Run, metrics: Sequence[str] = METRICS
                   ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """dy/d(unit activation) on the base run for each metric: metric -> (n_layers, seq, d_mlp),
    seq = every fed token; one forward pass, one backward pass per metric. Also returns y as
    this pass computed it (it must equal ``base.y``)."""
    model, sites = engine.model, engine.sites
    dtype = next(model.parameters()).dtype
    seq = base.ids.shape[1]
    ids, target = base.ids.clone(), base.target_ids.clone()  # ordinary tensors, usable under autograd
    offsets = [torch.zeros(1, seq, sites.d_mlp, dtype=dtype, device=engine.device, requires_grad=True)
               for _ in range(sites.n_layers)]
    grads: dict[str, torch.Tensor] = {}
    with torch.enable_grad(), _frozen_parameters(model), HookSet() as hooks:
        for layer, offset in enumerate(offsets):
            module, side = sites.hook_point("neuron", layer)  # the engine's neuron site
            (hooks.on_input if side == "input" else hooks.on_output)(module, lambda x, _o=offset: x + _o.to(x.dtype))
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=base.n_target).logits
        y = outcome_metrics(logits[:, 0], target_logprobs(logits, target), engine.refusal_ids)
        for i, metric in enumerate(metrics):
            per_layer = torch.autograd.grad(y[metric].sum(), offsets, retain_graph=i + 1 < len(metrics))
            grads[metric] = torch.cat(per_layer).detach()
    return grads, {metric: float(y[metric].detach()) for metric in METRICS}


def activation_deltas(base: Run, source: Run, positions: Sequence[int], n_layers: int) -> torch.Tensor:
    """source - base activation of every unit at the given base positions: (n_layers, len, d_mlp).
    The source run is right-aligned to the base, as in the engine."""
    shift = source.prompt_len - base.prompt_len
    bad = [q for q in positions if not (0 <= q < base.prompt_len and 0 <= q + shift < source.prompt_len)]
    if bad:
        raise ValueError(f"positions {bad[:5]} are not prompt positions of both runs "
                         f"(base {base.prompt_len}, source {source.prompt_len} tokens)")
    index = list(positions)
    shifted = [q + shift for q in positions]
    deltas = []
    for layer in range(n_layers):
        base_acts = base.acts[("neuron", layer)]
        wide = torch.promote_types(base_acts.dtype, torch.float32)
        deltas.append(source.acts[("neuron", layer)][shifted].to(wide) - base_acts[index].to(wide))
    return torch.stack(deltas)


def unit_estimates(grads: Mapping[str, torch.Tensor], base: Run, source: Run,
                   position_sets: Mapping[str, Sequence[int]]) -> dict[tuple[str, str], np.ndarray]:
    """Attribution estimate of each unit's NIE for every metric and position set:
    (metric, set name) -> (n_layers, d_mlp) float64."""
    n_layers = next(iter(grads.values())).shape[0]
    prompt = list(range(base.prompt_len))
    delta = activation_deltas(base, source, prompt, n_layers)
    out: dict[tuple[str, str], np.ndarray] = {}
    for metric, grad in grads.items():
        contribution = delta * grad[:, : base.prompt_len].to(delta.dtype)  # (n_layers, prompt, d_mlp)
        for name, positions in position_sets.items():
            out[(metric, name)] = contribution[:, list(positions)].sum(dim=1).double().cpu().numpy()
    return out
