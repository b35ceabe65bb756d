"""The layer bands and unit counts every claim statistic is judged on.

Torch-free. They are fixed by the model's shape alone, before any pair is seen;
:mod:`harmmed.stats.claims` only judges them.
"""

from __future__ import annotations

import math


def late_third_start(n_layers: int) -> int:
    """First layer of the last third: ceil(2n/3), so the last third holds at most n/3 layers."""
    return math.ceil(2 * n_layers / 3)


def late_half_start(n_layers: int) -> int:
    """First layer of the late half: ceil(n/2)."""
    return math.ceil(n_layers / 2)


def early_band(n_layers: int) -> range:
    """Layers 1 .. ceil(n/3) - 1: the first third without the extended-embedding layer 0."""
    return range(1, math.ceil(n_layers / 3))


def late_band(n_layers: int) -> range:
    """The last third, layers ceil(2n/3) .. n - 1."""
    return range(late_third_start(n_layers), n_layers)


def origin_bands(n_layers: int) -> dict[str, range]:
    """The three depth bands the origin profile holds one at a time: early (layers 1 ..
    ceil(n/3) - 1, without the extended-embedding layer 0), mid (ceil(n/3) .. ceil(2n/3) - 1)
    and late (the last third)."""
    return {"early": early_band(n_layers), "mid": range(math.ceil(n_layers / 3), late_third_start(n_layers)),
            "late": late_band(n_layers)}


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """Layers of a module window centred on ``layer`` (clipped at the ends): the module sweep's
    windows (``mediation`` imports this)."""
    half = window // 2
    return range(max(0, layer - half), min(n_layers - 1, layer + half) + 1)


def top_k(d_mlp: int, fraction: float) -> int:
    """The C3 unit count, fixed in advance: ceil(fraction x d_mlp), at least 1."""
    return max(1, math.ceil(fraction * d_mlp))
