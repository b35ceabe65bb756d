"""A second, deliberately plain implementation of activation patching, for verification.

It shares no code with the engine (``harmmed.patching`` is never imported) and takes none of its
shortcuts: every run feeds the whole prompt and the whole target from position 0, one
intervention per forward pass, no key/value cache, no batching, no low-rank head, full logits.
A mediator is read with a forward hook on a clean run and written with a forward hook on the
patched run. Only the module table (``harmmed.models.arch``: ``Sites.hook_point``) is shared, because
it says *where* a mediator is, not how to compute it.

Read it as the definition of a row: y_benign and y_harmful are the clean outcomes,
y_patched the outcome of the base run with some mediators replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.arch import resolve_sites


@dataclass(frozen=True)
class Edit:
    """Set ``site`` at ``layer`` and base positions ``positions`` (optionally only ``units``) to
    the source run's value (``frozen``: the base run's own clean value; ``values``: given)."""

    site: str  # residual (layer -1: the embeddings) | attn | mlp | neuron | attn_dims
    layer: int
    positions: tuple[int, ...]
    units: tuple[int, ...] | None = None
    frozen: bool = False
    values: tuple[float, ...] | None = None  # one value per unit, the same at every position


def _register(module, side: str, fn):
    """A plain forward (pre-)hook calling ``fn(tensor)``; a returned tensor replaces it."""
    if side == "output":
        def after(_module, _args, output):
            first = output[0] if isinstance(output, tuple) else output
            new = fn(first)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return module.register_forward_hook(after)

    def before(_module, args, kwargs):
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = fn(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})
    return module.register_forward_pre_hook(before, with_kwargs=True)


class ReferencePatcher:
    """Clean and patched teacher-forced passes of one model, scored like the paper's outcomes."""

    def __init__(self, model: torch.nn.Module, refusal_ids: Sequence[int]) -> None:
        self.model = model.eval()
        self.sites = resolve_sites(model)
        self.refusal_ids = sorted(int(i) for i in refusal_ids)
        self.device = next(model.parameters()).device

    def _forward(self, prompt_ids: Sequence[int], target_ids: Sequence[int], hooks: list) -> dict[str, float]:
        ids = torch.tensor([list(prompt_ids) + list(target_ids)], device=self.device)
        handles = [_register(*self.sites.hook_point(site, layer), fn) for site, layer, fn in hooks]
        try:
            with torch.no_grad():
                logits = self.model(input_ids=ids).logits[0].double()
        finally:
            for handle in handles:
                handle.remove()
        return self.score(logits, len(prompt_ids), target_ids)

    def score(self, logits: torch.Tensor, prompt_len: int, target_ids: Sequence[int]) -> dict[str, float]:
        """harm: mean log-probability of the target tokens; refusal: log-odds that the first
        response token is a refusal phrase's first token."""
        logp = torch.log_softmax(logits, dim=-1)
        harm = torch.stack([logp[prompt_len - 1 + j, t] for j, t in enumerate(target_ids)]).mean()
        first = logp[prompt_len - 1]
        refuse = torch.zeros_like(first, dtype=torch.bool)
        refuse[self.refusal_ids] = True
        refusal = torch.logsumexp(first[refuse], 0) - torch.logsumexp(first[~refuse], 0)
        return {"harm": float(harm), "refusal": float(refusal)}

    def clean(self, prompt_ids: Sequence[int], target_ids: Sequence[int],
              keys: Sequence[tuple[str, int]]) -> tuple[dict[str, float], dict[tuple[str, int], torch.Tensor]]:
        """Outcomes of the unpatched run and the activations (seq, width) of ``keys``."""
        recorded: dict[tuple[str, int], torch.Tensor] = {}

        def keep(key):
            return lambda x: recorded.__setitem__(key, x[0].detach().clone())
        y = self._forward(prompt_ids, target_ids, [(site, layer, keep((site, layer))) for site, layer in keys])
        return y, recorded

    def patched(self, base: tuple[Sequence[int], Sequence[int]], source: Sequence[int] | None,
                edits: Sequence[Edit]) -> dict[str, float]:
        """One intervention: the base (prompt, target) run with every edit applied at once.

        ``source`` is the other prompt; its positions are right-aligned to the base's.
        """
        prompt, target = base
        keys = sorted({(e.site, e.layer) for e in edits})
        _, base_acts = self.clean(prompt, target, keys)
        source_acts = self.clean(source, target, keys)[1] if source is not None else {}
        offset = len(source) - len(prompt) if source is not None else 0
        writes: dict[tuple[str, int], list] = {}
        for e in edits:
            if e.values is not None:
                values = torch.tensor(e.values, dtype=torch.float64).expand(len(e.positions), -1)
            else:
                acts = base_acts if e.frozen else source_acts
                rows = [q if e.frozen else q + offset for q in e.positions]
                values = acts[(e.site, e.layer)][rows]
                values = values if e.units is None else values[:, list(e.units)]
            writes.setdefault((e.site, e.layer), []).append((e.positions, e.units, values))

        def writer(items):
            def fn(x):
                x = x.clone()
                for positions, units, values in items:
                    values = values.to(device=x.device, dtype=x.dtype)
                    rows = torch.tensor(positions, device=x.device)
                    if units is None:
                        x[0, rows] = values
                    else:
                        x[0, rows[:, None], torch.tensor(units, device=x.device)[None, :]] = values
                return x
            return fn
        return self._forward(prompt, target, [(site, layer, writer(items)) for (site, layer), items in writes.items()])
