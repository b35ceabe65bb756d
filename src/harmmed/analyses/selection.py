"""Choosing components on the discovery split: the layer bands, module windows and unit counts
every claim statistic is judged on.

Torch-free. Selection happens here, before any held-out pair is seen;
:mod:`harmmed.stats.claims` only judges what was chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ..constants import metrics_in
from ..stats.effects import te_shares


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
    windows (``mediation`` imports this) and the windows the claims choose from."""
    half = window // 2
    return range(max(0, layer - half), min(n_layers - 1, layer + half) + 1)


# ---------------------------------------------------------------- selection on discovery
@dataclass(frozen=True)
class Window:
    """A set of consecutive layers of one module type, patched jointly."""

    site: str
    layers: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.layers[0]}:{self.layers[-1] + 1}"


def select_window(module_df: pd.DataFrame, metric: str, positions: str, band: range, n_layers: int,
                  min_abs_te: float) -> Window | None:
    """The module window inside ``band`` with the largest mean NIE / TE over the table's pairs
    (the discovery split). Ties go to the first of (site, layers) in sorted order."""
    rows = module_df[(module_df["metric"] == metric) & (module_df["kind"] == "NIE")
                     & (module_df["positions"].astype(str) == positions)]
    rows = te_shares(rows, min_abs_te)
    best: tuple[float, Window] | None = None
    for (site, layer, window), group in sorted(rows.groupby(["site", "layer", "window"])):
        layers = tuple(window_layers(int(layer), int(window), n_layers))
        if not set(layers) <= set(band):
            continue
        score = float(group["share"].mean())
        if best is None or score > best[0]:
            best = (score, Window(str(site), layers))
    return None if best is None else best[1]


def select_c1_windows(module_df: pd.DataFrame, positions: str, n_layers: int, min_abs_te: float
                      ) -> dict[tuple[str, str], Window]:
    """(metric, "early" | "late") -> the chosen window, for every metric and band with a candidate."""
    chosen = {}
    for metric in metrics_in(module_df):
        for name, band in (("early", early_band(n_layers)), ("late", late_band(n_layers))):
            window = select_window(module_df, metric, positions, band, n_layers, min_abs_te)
            if window is not None:
                chosen[(metric, name)] = window
    return chosen


def top_k(d_mlp: int, fraction: float) -> int:
    """The C3 unit count, fixed in advance: ceil(fraction x d_mlp), at least 1."""
    return max(1, math.ceil(fraction * d_mlp))
