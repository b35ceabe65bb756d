"""Batching of planned interventions: rows per pass from a memory budget, halving on out-of-memory.

The engine plans each intervention (where recomputation starts), this module decides which
planned rows share a forward pass, and the engine executes the passes. Batches never change
results, only how many rows one pass carries: a row's outcome depends on its own patches alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .patches import Planned, Run


@dataclass(frozen=True)
class RowCost:
    """The model sizes that set one batch row's activation memory."""

    n_layers: int
    d_model: int
    d_mlp: int
    vocab: int
    element_bytes: int

    @classmethod
    def of(cls, model: torch.nn.Module, n_layers: int, d_model: int, d_mlp: int) -> RowCost:
        return cls(n_layers, d_model, d_mlp, model.get_output_embeddings().weight.shape[0],
                   next(model.parameters()).element_size())

    def row_bytes(self, base: Run, start_pos: int) -> float:
        """Rough activation memory of one batch row: the budget only needs the right scale."""
        seq = base.ids.shape[1] - start_pos
        kv = 2 * self.n_layers * base.ids.shape[1] * self.d_model
        width = 8 * self.d_model + 3 * self.d_mlp
        return self.element_bytes * (seq * width + kv) + 4 * 3 * base.n_target * self.vocab


@dataclass(frozen=True)
class BatchLimits:
    """How many rows one pass may carry: at most ``max_batch_size``, and as many as fit the budget."""

    memory_budget_bytes: float
    max_batch_size: int

    def rows_per_pass(self, cost: RowCost, base: Run, start_pos: int) -> int:
        return int(max(1, min(self.max_batch_size, self.memory_budget_bytes // cost.row_bytes(base, start_pos))))


def batches(plans: list[Planned], base: Run, cost: RowCost, limits: BatchLimits) -> Iterator[list[Planned]]:
    """Group by start position (one shared prefix cache per batch), rows sorted by start
    layer; each block then computes only the rows that have started (see the engine's _forward)."""
    by_pos: dict[int, list[Planned]] = defaultdict(list)
    for plan in plans:
        by_pos[plan.start_pos].append(plan)
    for start_pos in sorted(by_pos):
        group = sorted(by_pos[start_pos], key=lambda p: (p.start_layer, p.index))
        limit = limits.rows_per_pass(cost, base, start_pos)
        for i in range(0, len(group), limit):
            yield group[i : i + limit]


def run_with_backoff(batch: list[Planned], forward: Callable[[list[Planned]], np.ndarray], out: np.ndarray,
                     stats: dict[str, int], device: torch.device, progress=None) -> None:
    """Run ``forward`` on the batch, writing each plan's outcome to ``out[plan.index]``; a chunk
    that runs out of memory is split in two and retried, so no work is lost (a single row that
    does not fit re-raises)."""
    pending = [batch]
    while pending:
        chunk = pending.pop()
        try:
            ys = forward(chunk)
        except torch.OutOfMemoryError:
            if len(chunk) == 1:
                raise
            stats["oom_backoffs"] += 1
            if device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(chunk) // 2
            pending += [chunk[half:], chunk[:half]]
            continue
        for plan, y in zip(chunk, ys):
            out[plan.index] = y
        if progress is not None:
            progress.update(len(chunk))
