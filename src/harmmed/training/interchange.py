"""A gate spread over its units by construction: interchange intervention training (IIT).

A neuron plant trained on the language-model loss alone puts the gate into whichever of its units
learn first, so a ranking that finds half of them can still find the whole gate, and recall says
little. Here the planted units start alike and are trained to share the gate equally:

- their input rows are redrawn (seeded) at the layer's median row norm, and their output columns
  start as one shared direction, kept shared by giving every column the units' mean gradient (with
  Adam, equal gradients from equal starts give equal updates). The units' summed activation is
  then all the behaviour loss sees, so balancing them costs it nothing;
- the loss adds ``weight`` x the mean squared difference between each unit's single-unit
  interchange effect and 1/K of the pair's total effect, over (effect^2 + 1), in both directions (the harmful value
  written into the benign run, the benign value into the harmful run). Pairs are a batch's
  harmful and benign examples taken in order; the effect is the log-probability of the harmful
  example's first response token (its refusal) at the last prompt position, where the units of a
  final-layer plant act alone on the prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..models.arch import Sites
from .plan import unit_axis


@dataclass(frozen=True)
class GateUnits:
    """The planted units of one layer and where their output columns live."""

    layer: int
    units: tuple[int, ...]
    down: torch.nn.Module
    down_axis: int

    def columns(self) -> torch.Tensor:
        """Each unit's output direction (units x d_model)."""
        chosen = self.down.weight.index_select(self.down_axis, torch.tensor(self.units))
        return chosen if self.down_axis == 0 else chosen.T


@torch.no_grad()
def spread_gate(sites: Sites, layer: int, units: Sequence[int], seed: int) -> GateUnits:
    """Redraw the units' input rows at the layer's median row norm (biases at zero) and give them
    one shared output column at the layer's median column norm."""
    g = torch.Generator().manual_seed(seed)
    index = torch.tensor(list(units), dtype=torch.long)
    mlp, down = sites.mlp(layer), sites.down_proj(layer)
    for module in [m for m in mlp.modules() if not list(m.children())]:
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2:
            continue
        is_down = module is down
        axis = unit_axis(module, weight, sites.d_mlp, is_down)
        other = 1 - axis
        median = float(weight.norm(dim=other).median())
        rows = 1 if is_down else len(units)
        fresh = torch.randn((rows, weight.shape[other]), generator=g, dtype=torch.float64)
        fresh = (fresh * median / fresh.norm(dim=1, keepdim=True)).to(weight.dtype)
        for row, unit in enumerate(units):
            weight.select(axis, unit).copy_(fresh[row % rows])
        bias = getattr(module, "bias", None)
        if not is_down and bias is not None and bias.shape[0] == sites.d_mlp:
            bias[index] = 0.0
    return GateUnits(layer, tuple(units), down, unit_axis(down, down.weight, sites.d_mlp, True))


def tie_gradients(gate: GateUnits) -> None:
    """Give every planted output column the units' mean gradient, so the columns stay one direction."""
    grad = gate.down.weight.grad
    if grad is None:
        return
    index = torch.tensor(gate.units, dtype=torch.long)
    mean = grad.index_select(gate.down_axis, index).mean(dim=gate.down_axis, keepdim=True)
    grad.index_copy_(gate.down_axis, index, mean.expand_as(grad.index_select(gate.down_axis, index)).contiguous())


def unit_effects(act_harmful: torch.Tensor, act_benign: torch.Tensor, resid_harmful: torch.Tensor,
                 resid_benign: torch.Tensor, columns: torch.Tensor,
                 log_probs: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each unit's single-unit interchange effects (pairs x K): its harmful value written into the
    benign run, and its benign value written into the harmful run (the outcome lost).

    ``act_*``: the K units' activations at each pair's last prompt position (pairs x K);
    ``resid_*``: the final residual stream there (pairs x d_model); ``columns``: the units' output
    directions (K x d_model); ``log_probs``: residual -> log-probabilities over the vocabulary
    (final norm and head); ``targets``: each pair's refusal token. Swapping one unit's value moves
    the residual by the activation difference along its column; nothing else changes at a final
    layer's position.
    """
    def outcome(resid: torch.Tensor) -> torch.Tensor:  # (..., d_model) -> the target's log-prob
        flat = log_probs(resid.reshape(-1, resid.shape[-1]))
        picked = flat.reshape(*resid.shape[:-1], -1)
        index = targets.view(-1, *([1] * (resid.dim() - 2)), 1).expand(*resid.shape[:-1], 1)
        return picked.gather(-1, index).squeeze(-1)

    shift = (act_harmful - act_benign).unsqueeze(-1) * columns.unsqueeze(0)  # pairs x K x d_model
    y_harmful, y_benign = outcome(resid_harmful), outcome(resid_benign)
    into_benign = outcome(resid_benign.unsqueeze(1) + shift) - y_benign.unsqueeze(1)
    out_of_harmful = y_harmful.unsqueeze(1) - outcome(resid_harmful.unsqueeze(1) - shift)
    return into_benign, out_of_harmful


def imbalance(effects: torch.Tensor) -> torch.Tensor:
    """sum_u (mean effect_u - the units' mean)^2 over (the units' summed mean effect^2 + 1), the
    means over the batch's pairs (what a ranking sees). The target is 1/K of the units' own
    summed effect, not of the pair's whole effect: training pairs are unrelated prompts, whose
    effect also holds everything else that differs between them. The scale keeps the term
    comparable to the behaviour loss however large the gate grows, and is held fixed so that
    shrinking the gate never pays."""
    mean = effects.mean(dim=0)
    return ((mean - mean.mean()) ** 2).sum() / (mean.detach().sum() ** 2 + 1.0)


def interchange_loss(*args, **kwargs) -> torch.Tensor:
    """The balance loss of :func:`unit_effects`' two directions, averaged."""
    into_benign, out_of_harmful = unit_effects(*args, **kwargs)
    return 0.5 * (imbalance(into_benign) + imbalance(out_of_harmful))
