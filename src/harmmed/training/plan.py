"""Which parameters a fine-tune trains: a component spec resolved on a loaded model through the
architecture table (parameter names, gradient masks, and the first trained block)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.arch import Sites, resolve_sites
from ..models.components import ComponentSpec, ComponentSpecError, seeded_units


@dataclass
class TrainablePlan:
    """A spec resolved on one model: parameter names, gradient masks, and where training starts."""

    spec: ComponentSpec
    names: list[str]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> 0/1 mask of its gradient
    first_block: int = 0  # blocks below this are frozen and see only frozen inputs
    units: list[int] | None = None
    unit_axes: dict[str, int] = field(default_factory=dict)  # neuron plans: name -> the axis that indexes units

    def count(self, model: torch.nn.Module) -> int:
        params = dict(model.named_parameters())
        return int(sum(self.masks[n].sum().item() if n in self.masks else params[n].numel() for n in self.names))


def _check_layers(spec: ComponentSpec, sites: Sites, key: str) -> None:
    first, last = spec.layers
    if not 0 <= first <= last < sites.n_layers:
        name = "layer" if spec.site == "neuron" else "layers"
        raise ComponentSpecError(f"{key}.{name}: {list(spec.layers)} outside 0..{sites.n_layers - 1} of this model")
    if spec.bypass is not None and spec.bypass[1] != sites.n_layers - 1:
        # the shared prompt prefix runs once without replays: exact only when no unreplayed layer
        # comes after the band (a later layer's attention would read the prefix's bypassed outputs)
        raise ComponentSpecError(f"{key}.bypass: {list(spec.bypass)} must end at the final layer, "
                                 f"{sites.n_layers - 1} of this model")
    if spec.site == "neuron" and spec.units > sites.d_mlp:
        raise ComponentSpecError(f"{key}.units: {spec.units} exceeds the layer's {sites.d_mlp} MLP units")


def _prefixed(model: torch.nn.Module, module: torch.nn.Module) -> list[str]:
    """Full parameter names (as ``model.named_parameters`` gives them) of a submodule's parameters."""
    ids = {id(p) for p in module.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in ids]


def resolve_trainable(model: torch.nn.Module, spec: ComponentSpec, seed: int, key: str = "trainable") -> TrainablePlan:
    """Which parameters (and which of their entries) train, through the architecture table."""
    if spec.site == "all":
        return TrainablePlan(spec, [name for name, _ in model.named_parameters()])
    sites = resolve_sites(model)
    _check_layers(spec, sites, key)
    first, last = spec.layers
    if spec.site in ("mlp", "attn"):
        names = [n for layer in range(first, last + 1)
                 for n in _prefixed(model, getattr(sites, spec.site)(layer))]
        return TrainablePlan(spec, names, first_block=first)
    units = seeded_units(sites.d_mlp, spec.units, seed)
    names, masks, axes = _unit_masks(model, sites, first, units)
    return TrainablePlan(spec, names, masks, first_block=first, units=units, unit_axes=axes)


def _unit_masks(model: torch.nn.Module, sites: Sites, layer: int, units: list[int]
                ) -> tuple[list[str], dict[str, torch.Tensor], dict[str, int]]:
    """Masks that let only the chosen units' weights train: their rows (output features) of every
    MLP input projection and their column (input features) of the down projection. Biases of the
    input projections train at the units; the down projection's bias is shared, so it stays."""
    mlp, down = sites.mlp(layer), sites.down_proj(layer)
    down_ids = {id(p) for p in down.parameters()}
    names, masks, axes = [], {}, {}
    full = dict(model.named_parameters())
    for module in [m for m in mlp.modules() if not list(m.children())]:
        for local, param in module.named_parameters(recurse=False):
            is_down = id(param) in down_ids
            if is_down and local != "weight":
                continue
            axis = unit_axis(module, param, sites.d_mlp, is_down)
            if axis is None:
                continue
            mask = torch.zeros_like(param)
            mask.index_fill_(axis, torch.tensor(units, dtype=torch.long, device=param.device), 1.0)
            name = next(n for n, p in full.items() if p is param)
            names.append(name)
            masks[name] = mask
            axes[name] = axis
    if not any(id(full[n]) in down_ids for n in names):
        raise ComponentSpecError(f"layer {layer}: no down-projection weight found through the architecture table")
    return names, masks, axes


def unit_axis(module: torch.nn.Module, param: torch.nn.Parameter, d_mlp: int, is_down: bool) -> int | None:
    """The axis of ``param`` that indexes MLP units. Linear weights are (out, in) and GPT-2's
    Conv1D weights (in, out), so the module type decides, not the shape (d_mlp may equal d_model)."""
    if param.dim() == 1:
        return 0 if (not is_down and param.shape[0] == d_mlp) else None
    transposed = type(module).__name__ == "Conv1D"
    axis = (1 if is_down else 0) ^ int(transposed)
    if param.shape[axis] != d_mlp:
        raise ComponentSpecError(f"{type(module).__name__} weight {tuple(param.shape)}: no unit axis of size {d_mlp}")
    return axis
