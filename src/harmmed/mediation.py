"""The layer and module analyses: which interventions to run per pair, and their tidy rows.

Every row of ``layer.csv``, ``module.csv`` and ``severed.csv`` is one (pair, metric, mediator,
positions) observation with both clean outcomes beside the patched one, so effects can be
recomputed from the file alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .constants import METRICS
from .engine import FROZEN_BASE, Intervention, MediationEngine, Patch, Run
from .prompts import EncodedPair


@dataclass(frozen=True)
class Cell:
    """Labels of one intervention's rows (everything but the pair and the metric)."""

    kind: str
    site: str
    layer: int
    window: int
    positions: str
    severed: str | None = None


def position_sets(pair: EncodedPair) -> dict[str, tuple[int, ...]]:
    prompt_len = len(pair.harmful_ids)
    return {
        "all": tuple(range(prompt_len)),
        "post": tuple(pair.post_positions),
        "last": (prompt_len - 1,),
    }


def window_layers(layer: int, window: int, n_layers: int) -> range:
    half = window // 2
    return range(max(0, layer - half), min(n_layers - 1, layer + half) + 1)


def clean_runs(engine: MediationEngine, pair: EncodedPair) -> tuple[Run, Run]:
    harmful, benign = engine.runs([(pair.harmful_ids, pair.target_ids), (pair.benign_ids, pair.target_ids)])
    return harmful, benign


def layer_cells(pair: EncodedPair, n_layers: int, positions: list[str]) -> list[tuple[Cell, Intervention]]:
    sets = position_sets(pair)
    cells = []
    for kind in ("NIE", "NDE"):
        for layer in range(-1, n_layers):
            for name in positions:
                cells.append((Cell(kind, "residual", layer, 1, name), (Patch("residual", layer, sets[name]),)))
    return cells


def heatmap_cells(pair: EncodedPair, n_layers: int, sites: list[str]) -> list[tuple[Cell, Intervention]]:
    cells = []
    for site in sites:
        for layer in range(-1 if site == "residual" else 0, n_layers):
            for position in range(len(pair.harmful_ids)):
                cells.append((Cell("NIE", site, layer, 1, str(position)), (Patch(site, layer, (position,)),)))
    return cells


def module_cells(pair: EncodedPair, n_layers: int, positions: list[str], windows: list[int]
                 ) -> list[tuple[Cell, Intervention]]:
    sets = position_sets(pair)
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
    patched = position_sets(pair)[positions]
    everywhere = tuple(range(len(pair.harmful_ids) + len(pair.target_ids) - 1))  # every fed token
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
        for (cell, _), y in zip(chosen, ys):
            for m_index, metric in enumerate(METRICS):
                row = {
                    "pair_id": pair.pair_id, "metric": metric, "kind": cell.kind, "site": cell.site,
                    "layer": cell.layer, "window": cell.window, "positions": cell.positions,
                    "y_benign": benign.y[metric], "y_harmful": harmful.y[metric],
                    "y_patched": float(y[m_index]), "effect": float(y[m_index]) - benign.y[metric],
                }
                if cell.severed is not None:
                    row["severed"] = cell.severed
                yield row

