"""The one sweep loop over pairs, with its progress bar, that every mediation stage runs.

Each pair gets its clean runs once, then the stage's ``per_pair`` turns one :class:`PairStep`
into rows (table rows for every mediation table, one pair's screen or effects for the screen
and the recovery). The bar counts interventions when the caller knows each pair's count up
front (``per_pair`` then advances ``step.progress``), otherwise pairs. :func:`sweep_cells` is
the specialisation for stages whose whole work is a list of labelled interventions per pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tqdm import tqdm

from ..datasets.prompts import EncodedPair
from ..patching.patches import Intervention
from .mediation import Cell, run_cells
from .pairs import clean_runs

T = TypeVar("T")


@dataclass(frozen=True)
class PairStep:
    """One pair of a sweep: its index in the sweep, the pair, its clean (harmful, benign) runs,
    and the progress bar when the bar counts interventions (None when it counts pairs)."""

    index: int
    pair: EncodedPair
    runs: tuple[Any, Any]
    progress: Any = None


PerPair = Callable[[PairStep], list[T]]


def sweep(engine, pairs: Sequence[EncodedPair], per_pair: PerPair[T], desc: str,
          interventions_per_pair: Sequence[int] | None = None) -> list[T]:
    """Rows of ``per_pair(step)`` for every pair, in order. With ``interventions_per_pair`` the
    bar counts patches and ``step.progress`` is the bar; without, the bar counts pairs."""
    by_patch = interventions_per_pair is not None
    total = sum(interventions_per_pair) if by_patch else len(pairs)
    rows: list[T] = []
    with tqdm(total=total, desc=desc, unit="patch" if by_patch else "pair", mininterval=10, disable=False) as bar:
        for i, pair in enumerate(pairs):
            rows.extend(per_pair(PairStep(i, pair, clean_runs(engine, pair), bar if by_patch else None)))
            if not by_patch:
                bar.update(1)
    return rows


def sweep_cells(engine, pairs: Sequence[EncodedPair],
                cells_of: Callable[[EncodedPair], list[tuple[Cell, Intervention]]], desc: str) -> list[dict]:
    """Run the labelled interventions ``cells_of(pair)`` of every pair, one bar over interventions."""
    planned = [cells_of(pair) for pair in pairs]
    return sweep(engine, pairs, lambda step: list(run_cells(engine, step.pair, planned[step.index], step.runs,
                                                            step.progress)),
                 desc, [len(cells) for cells in planned])
