"""The one sweep loop over pairs, with its progress bar, that every mediation stage runs.

Each pair gets its clean runs once, then ``per_pair`` turns them into rows. The bar counts
interventions when the caller knows each pair's count up front (and ``per_pair`` advances it),
otherwise pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

from .mediation import Cell, clean_runs, run_cells
from .patches import Intervention
from .prompts import EncodedPair

T = TypeVar("T")
PerPair = Callable[[int, EncodedPair, tuple[Any, Any], Any], list[T]]  # (index, pair, runs, bar) -> rows


def sweep(engine, pairs: Sequence[EncodedPair], per_pair: PerPair[T], desc: str,
          interventions_per_pair: Sequence[int] | None = None) -> list[T]:
    """Rows of ``per_pair(index, pair, clean_runs, bar)`` for every pair, in order (rows are
    table rows for every mediation table, one pair's screen or effects for the screen and the
    recovery). With ``interventions_per_pair`` the bar counts patches and ``per_pair`` gets it;
    without, the bar counts pairs and ``per_pair`` gets None."""
    by_patch = interventions_per_pair is not None
    total = sum(interventions_per_pair) if by_patch else len(pairs)
    rows: list[T] = []
    with tqdm(total=total, desc=desc, unit="patch" if by_patch else "pair", mininterval=10, disable=False) as bar:
        for i, pair in enumerate(pairs):
            rows.extend(per_pair(i, pair, clean_runs(engine, pair), bar if by_patch else None))
            if not by_patch:
                bar.update(1)
    return rows


def sweep_pairs(engine, pairs: Sequence[EncodedPair], per_pair: Callable[[int, EncodedPair, tuple[Any, Any]], list[T]],
                desc: str) -> list[T]:
    """``sweep`` with a progress bar over pairs, for ``per_pair(index, pair, runs)``."""
    return sweep(engine, pairs, lambda i, pair, runs, _bar: per_pair(i, pair, runs), desc)


def sweep_cells(engine, pairs: Sequence[EncodedPair],
                cells_of: Callable[[int, EncodedPair], list[tuple[Cell, Intervention]]], desc: str) -> list[dict]:
    """Run ``cells_of(index, pair)`` for every pair with one progress bar over interventions."""
    planned = [cells_of(i, pair) for i, pair in enumerate(pairs)]
    return sweep(engine, pairs, lambda i, pair, runs, bar: list(run_cells(engine, pair, planned[i], runs, bar)),
                 desc, [len(cells) for cells in planned])
