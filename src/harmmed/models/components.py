"""Component specs: which parameters of a model a fine-tune may change (torch-free).

The config's ``trainable`` value of a ``source: finetune`` model is parsed here, so the config
check can name a bad key before any job runs; :mod:`harmmed.training.finetune` resolves a spec on a loaded
model through the architecture table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PLANT_SITES = ("mlp", "attn", "neuron")


class ComponentSpecError(ValueError):
    """A ``trainable`` spec is malformed or does not fit the model; the message names the key."""


@dataclass(frozen=True)
class ComponentSpec:
    """What a fine-tune may change. ``site == "all"``: every parameter."""

    site: str
    layers: tuple[int, int] | None = None  # inclusive band (mlp, attn); (L, L) for neuron
    units: int | None = None  # neuron: how many seeded units
    # mlp, attn: an inclusive band whose attention and MLP outputs are replayed from the base
    # model in a second training pass, so the decision must reach the logits around it
    bypass: tuple[int, int] | None = None

    def planted(self) -> dict[str, Any] | None:
        """The spec as the manifest records it (``None``: unrestricted training, no ground truth)."""
        if self.site == "all":
            return None
        if self.site == "neuron":
            return {"site": "neuron", "layer": self.layers[0], "units": self.units}
        planted: dict[str, Any] = {"site": self.site, "layers": list(self.layers)}
        if self.bypass is not None:
            planted["bypass"] = list(self.bypass)
        return planted


def parse_trainable(value: Any, key: str = "trainable") -> ComponentSpec:
    """Read a config ``trainable`` value; errors name ``key``."""
    if value == "all":
        return ComponentSpec("all")
    if not isinstance(value, dict):
        raise ComponentSpecError(f"{key}: must be 'all' or a mapping with 'site', got {value!r}")
    site = value.get("site")
    if site not in PLANT_SITES:
        raise ComponentSpecError(f"{key}.site: must be one of {PLANT_SITES}, got {site!r}")
    if site == "neuron":
        extra = set(value) - {"site", "layer", "units"}
        layer, units = value.get("layer"), value.get("units")
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise ComponentSpecError(f"{key}.layer: an integer layer is required for site neuron, got {layer!r}")
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ComponentSpecError(f"{key}.units: a positive number of units is required, got {units!r}")
        spec = ComponentSpec("neuron", (layer, layer), units)
    else:
        extra = set(value) - {"site", "layers", "bypass"}
        layers = _band(value.get("layers"), f"{key}.layers")
        bypass = None if value.get("bypass") is None else _band(value["bypass"], f"{key}.bypass")
        if bypass is not None and bypass[0] <= layers[1]:
            raise ComponentSpecError(f"{key}.bypass: {list(bypass)} must start after the trained layers {list(layers)}")
        spec = ComponentSpec(site, layers, bypass=bypass)
    if extra:
        raise ComponentSpecError(f"{key}: unknown key(s) {sorted(extra)} for site {site!r}")
    return spec


def _band(layers: Any, key: str) -> tuple[int, int]:
    if (not isinstance(layers, (list, tuple)) or len(layers) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers) or layers[0] > layers[1]):
        raise ComponentSpecError(f"{key}: must be [first, last] with first <= last, got {layers!r}")
    return (layers[0], layers[1])


def seeded_units(d_mlp: int, units: int, seed: int) -> list[int]:
    """The units a neuron plant trains: ``units`` of ``d_mlp`` drawn without replacement by ``seed``."""
    return sorted(np.random.default_rng(seed).choice(d_mlp, units, replace=False).tolist())
