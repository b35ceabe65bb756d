"""The layer and module analyses: which interventions to run per pair, and their tidy rows.

Every row of ``layer.csv``, ``module.csv`` and ``severed.csv`` is one (pair, metric, mediator,
positions) observation with both clean outcomes beside the patched one, so effects can be
recomputed from the file alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..datasets.prompts import EncodedPair
from ..patching.engine import MediationEngine
from ..patching.patches import FROZEN_BASE, Intervention, Patch, Run
from .pairs import aligned_positions, base_prompt_len, position_sets
from .rows import outcome_rows
from .selection import window_layers


@dataclass(frozen=True)
class Cell:
    """Labels of one intervention's rows (everything but the pair and the metric)."""

    kind: str
    site: str
    layer: int
    window: int
    positions: str
    severed: str | None = None

    def labels(self) -> dict:
        """The row labels before the outcomes (``severed`` follows them, on severed-path cells)."""
        labels = {"kind": self.kind, "site": self.site, "layer": self.layer, "window": self.window,
                  "positions": self.positions}
        return labels if self.severed is None else {**labels, "severed": self.severed}


def layer_cells(pair: EncodedPair, n_layers: int, positions: list[str]) -> list[tuple[Cell, Intervention]]:
    cells = []
    for kind in ("NIE", "NDE"):
        sets = position_sets(pair, kind)
        for layer in range(-1, n_layers):
            for name in positions:
                cells.append((Cell(kind, "residual", layer, 1, name), (Patch("residual", layer, sets[name]),)))
    return cells


def heatmap_cells(pair: EncodedPair, n_layers: int, sites: list[str]) -> list[tuple[Cell, Intervention]]:
    """One NIE cell per (site, layer, base position); the positions index the base run."""
    cells = []
    for site in sites:
        for layer in range(-1 if site == "residual" else 0, n_layers):
            for position in aligned_positions(pair, "NIE"):
                cells.append((Cell("NIE", site, layer, 1, str(position)), (Patch(site, layer, (position,)),)))
    return cells


def module_cells(pair: EncodedPair, n_layers: int, positions: list[str], windows: list[int]
                 ) -> list[tuple[Cell, Intervention]]:
    sets = position_sets(pair, "NIE")
    cells = []
    for site in ("attn", "mlp"):
        for window in windows:
            for layer in range(n_layers):
                for name in positions:
                    patches = tuple(Patch(site, k, sets[name]) for k in window_layers(layer, window, n_layers))
                    cells.append((Cell("NIE", site, layer, window, name), patches))
    return cells


def severed_cells(pair: EncodedPair, n_layers: int, positions: str) -> list[tuple[Cell, Intervention]]:
    """Residual NIE at each layer with every later mlp (attn) output frozen at its clean benign
    value at all positions, prompt and target (Meng et al.'s severed paths)."""
    patched = position_sets(pair, "NIE")[positions]
    # every token fed to the base run (benign, or corrupted in noise mode), prompt and target
    everywhere = tuple(range(base_prompt_len(pair, "NIE") + len(pair.target_ids) - 1))
    cells = []
    for severed in ("none", "mlp", "attn"):
        for layer in range(-1, n_layers):
            frozen = () if severed == "none" else tuple(
                Patch(severed, k, everywhere, value_from=FROZEN_BASE) for k in range(layer + 1, n_layers)
            )
            cells.append((Cell("NIE", "residual", layer, 1, positions, severed),
                          (Patch("residual", layer, patched), *frozen)))
    return cells


def run_cells(engine: MediationEngine, pair: EncodedPair, cells: list[tuple[Cell, Intervention]],
              runs: tuple[Run, Run], progress=None) -> Iterator[dict]:
    """Patch each cell (NIE: benign base, harmful source; NDE: the reverse) and yield rows."""
    harmful, benign = runs
    for kind, base, source in (("NIE", benign, harmful), ("NDE", harmful, benign)):
        chosen = [(cell, iv) for cell, iv in cells if cell.kind == kind]
        if not chosen:
            continue
        ys = engine.patch(base, source, [iv for _, iv in chosen], progress=progress)
        yield from outcome_rows(pair.pair_id, [cell.labels() for cell, _ in chosen], ys, runs)
