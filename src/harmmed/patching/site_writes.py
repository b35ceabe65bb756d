"""What one batched patched pass writes into each mediator site, and the hook that writes it.

Every patch of a batch is gathered per (site, layer), so one hook serves the whole batch: whole
vectors (``dense``: a patch without units) and single units (``sparse``) at given rows and
positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class SiteWrites:
    """The values a batch writes into one (site, layer): row, position (and unit) indices."""

    dense_rows: list[int] = field(default_factory=list)
    dense_positions: list[int] = field(default_factory=list)
    dense_values: list[torch.Tensor] = field(default_factory=list)  # (n_positions, width) each
    sparse_rows: list[int] = field(default_factory=list)
    sparse_positions: list[int] = field(default_factory=list)
    sparse_units: list[int] = field(default_factory=list)
    sparse_values: list[torch.Tensor] = field(default_factory=list)  # flattened (n_positions * n_units) each

    def add(self, row: int, local: list[int], units: tuple[int, ...] | None, values: torch.Tensor) -> None:
        """Write ``values`` at batch ``row`` and sequence positions ``local`` (all units or some)."""
        if units is None:
            self.dense_rows += [row] * len(local)
            self.dense_positions += local
            self.dense_values.append(values)
        else:
            n = len(units)
            self.sparse_rows += [row] * (len(local) * n)
            self.sparse_positions += [q for q in local for _ in range(n)]
            self.sparse_units += list(units) * len(local)
            self.sparse_values.append(values.reshape(-1))

    def renumbered(self, remap: dict[int, int] | None) -> SiteWrites:
        """The same writes with batch rows renumbered within a block's active rows."""
        if remap is None:
            return self
        return SiteWrites([remap[r] for r in self.dense_rows], self.dense_positions, self.dense_values,
                          [remap[r] for r in self.sparse_rows], self.sparse_positions, self.sparse_units,
                          self.sparse_values)

    def setter(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """Hook body writing these values into a site's activation (batch, seq, width)."""

        def as_index(xs: list[int]) -> torch.Tensor:
            return torch.tensor(xs, dtype=torch.long, device=device)

        dense = ((as_index(self.dense_rows), as_index(self.dense_positions), torch.cat(self.dense_values))
                 if self.dense_values else None)
        sparse = ((as_index(self.sparse_rows), as_index(self.sparse_positions), as_index(self.sparse_units),
                   torch.cat(self.sparse_values)) if self.sparse_values else None)

        def fn(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            if dense is not None:
                rows, positions, values = dense
                x[rows, positions] = values.to(x.dtype)
            if sparse is not None:
                rows, positions, units, values = sparse
                x[rows, positions, units] = values.to(x.dtype)
            return x

        return fn
