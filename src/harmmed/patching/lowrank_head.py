"""The low-rank LM head for final-layer neuron patches (see :class:`NeuronHead`).

The engine is passed in (``engine``: a MediationEngine) and never imported here, so the engine
can import this module without a cycle.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from weakref import WeakKeyDictionary

import torch


class NeuronHead:
    """The unembedding of final-layer neuron patches, without the full vocabulary matmul.

    Patching units U of the final MLP at the last prompt position moves the final residual by
    a combination of those units' down-projection columns w_u. Every final norm in the table
    has the form N(x) = s(x) * A x + b (RMSNorm, gemma's, LayerNorm: a per-row scale of a
    fixed linear map, plus a bias b = N(0)), so the LM-head input lies in the span of
    N(h_base) - b and N(w_u) - b, and the affine head maps it to
    head(b) + c_0 z_base + sum_u c_u Z[u] with Z[u] = head(N(w_u) - b) - head(0) computed
    once per model. Each row's coefficients are a least-squares fit of its actual head input,
    and a row whose fit is not exact to float32 precision (e.g. gemma2, whose post-MLP norm
    breaks the linearity) falls back to the full head, so results match the plain path
    either way. On SmolLM2 a row then costs |U| x vocab instead of d_model x vocab.

    Units whose directions are identical (a spread gate's copies of one unit) enter the fit once:
    duplicated columns leave least squares rank-deficient, and its split of a coefficient
    between them, which the library may choose differently from run to run, moved the logits
    by 1e-5 between runs of the same inputs.
    """

    MAX_UNITS = 64  # beyond this the fit costs more than it saves
    FIT_TOLERANCE = 2e-6  # relative residual of the fit; float32 rounding leaves about 2e-7

    def __init__(self, engine: Any, directions: torch.Tensor, unit_logits: torch.Tensor,
                 offset: torch.Tensor, origin_logits: torch.Tensor) -> None:
        self.engine = engine
        self.directions = directions  # (d_mlp, d_model): N(w_u) - b
        self.unit_logits = unit_logits  # (d_mlp, vocab): head(N(w_u) - b) - head(0)
        self.offset = offset  # (d_model,): b = N(0)
        self.origin_logits = origin_logits  # (vocab,): head(b)
        _, group = torch.unique(directions, dim=0, return_inverse=True)
        lowest: dict[int, int] = {}  # direction -> the lowest unit with it
        self.canonical = [lowest.setdefault(g, unit) for unit, g in enumerate(group.tolist())]
        self._bases: WeakKeyDictionary[Any, tuple[torch.Tensor, torch.Tensor]] = WeakKeyDictionary()  # per run

    @classmethod
    @torch.inference_mode()
    def build(cls, engine: Any) -> NeuronHead | None:
        model, sites = engine.model, engine.sites
        head = model.get_output_embeddings()
        param = next(model.parameters())
        vocab = head.weight.shape[0]
        if param.dtype != torch.float32 or 2 * sites.d_mlp * vocab * 4 > engine.memory_budget_bytes:
            return None  # the exactness contract is float32's; and the table must fit the budget
        down, norm = sites.down_proj(sites.n_layers - 1), sites.final_norm
        zero_unit = torch.zeros(1, 1, sites.d_mlp, dtype=param.dtype, device=param.device)
        zero_model = torch.zeros(1, 1, sites.d_model, dtype=param.dtype, device=param.device)
        offset = norm(zero_model)[0, 0]
        head_zero = head(zero_model)[0, 0]
        directions = torch.empty(sites.d_mlp, sites.d_model, dtype=param.dtype, device=param.device)
        unit_logits = torch.empty(sites.d_mlp, vocab, dtype=param.dtype, device=param.device)
        down_zero = down(zero_unit)[0, 0]
        eye = torch.eye(sites.d_mlp, dtype=param.dtype, device=param.device)
        for start in range(0, sites.d_mlp, 256):
            stop = min(start + 256, sites.d_mlp)
            basis = eye[start:stop].unsqueeze(1)
            columns = down(basis) - down_zero  # w_u, whatever the projection's layout and bias
            directions[start:stop] = norm(columns)[:, 0] - offset
            unit_logits[start:stop] = head(directions[start:stop].unsqueeze(1))[:, 0] - head_zero
        return cls(engine, directions, unit_logits, offset, head(offset.view(1, 1, -1))[0, 0])

    def forward_for(self, base: Any, units: list[tuple[int, ...] | None]):
        head = self.engine.model.get_output_embeddings()
        full = type(head).forward
        stats = self.engine.stats
        base_input, base_logits = self._base(base)

        def forward(x: torch.Tensor) -> torch.Tensor:  # x: (rows, 1, d_model), the last prompt position
            inputs = x[:, -1]
            out = torch.empty(x.shape[0], 1, self.unit_logits.shape[1], dtype=x.dtype, device=x.device)
            exact = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            # a row qualifies by the units the engine chose (copies counted); its fit sees each direction once
            distinct = [None if chosen is None or len(chosen) > self.MAX_UNITS else self.distinct(chosen)
                        for chosen in units]
            by_size: dict[int, list[int]] = defaultdict(list)
            for row, chosen in enumerate(distinct):
                if chosen is not None:
                    by_size[len(chosen)].append(row)
            for size, rows in by_size.items():
                index = torch.tensor([distinct[r] for r in rows], dtype=torch.long, device=x.device)  # (n, size)
                basis = torch.cat([base_input.expand(len(rows), 1, -1), self.directions[index]], dim=1).double()
                target = (inputs[rows] - self.offset).double()
                coef = torch.linalg.lstsq(basis.transpose(1, 2), target.unsqueeze(-1)).solution[..., 0]
                residual = (coef.unsqueeze(1) @ basis)[:, 0] - target
                fits = residual.norm(dim=-1) <= self.FIT_TOLERANCE * target.norm(dim=-1).clamp_min(1e-30)
                coef = coef.to(x.dtype)
                # sum_u c_u Z[u] as a sparse (rows x d_mlp) product: size x vocab work per row
                sparse = torch.sparse_coo_tensor(
                    torch.stack([torch.arange(len(rows), device=x.device).repeat_interleave(size), index.flatten()]),
                    coef[:, 1:].flatten(), (len(rows), self.unit_logits.shape[0]), check_invariants=False).coalesce()
                logits = torch.addmm(self.origin_logits + coef[:, :1] * base_logits, sparse, self.unit_logits)
                rows_t = torch.tensor(rows, dtype=torch.long, device=x.device)
                out[rows_t[fits], 0] = logits[fits]
                exact[rows_t[fits]] = True
            rest = (~exact).nonzero()[:, 0]
            if len(rest):
                out[rest] = full(head, x[rest])
            stats["low_rank_head_rows"] += int(exact.sum())
            return out

        return forward

    def distinct(self, units: tuple[int, ...]) -> tuple[int, ...]:
        """``units`` with each direction once (by its lowest unit), in order of first appearance:
        units with directions of their own stay as they are."""
        return tuple(dict.fromkeys(self.canonical[u] for u in units))

    @torch.inference_mode()
    def _base(self, base: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The base run's head input (minus b) at the last prompt position, and its logits
        (minus head(b)): the direction every row keeps."""
        if base not in self._bases:
            head = self.engine.model.get_output_embeddings()
            final = self.engine.sites.n_layers - 1
            residual = base.acts[("residual", final)][base.prompt_len - 1].view(1, 1, -1)
            direction = self.engine.sites.final_norm(residual)[0, 0] - self.offset
            # one two-row product: head(0) from the same matmul as head(direction), so their
            # difference carries no rounding from differently shaped products
            logits = head(torch.stack([direction, torch.zeros_like(direction)]).unsqueeze(1))[:, 0]
            self._bases[base] = (direction, logits[0] - logits[1])
        return self._bases[base]
