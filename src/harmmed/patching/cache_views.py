"""Views of key/value caches and a partial block forward, so patched passes reuse clean work.

The engine resumes patched passes from a clean run's cache (a sliced view), shares one prefix
across batch rows (an expanded view) and runs a block only on the rows whose patch has started.
"""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache


def partial_block(block: torch.nn.Module, layer: int, active: list[int], rows: int, cached: torch.Tensor):
    """A forward for ``block`` that runs only the ``active`` batch rows and gives every other
    row the base run's output ``cached`` (seq, d_model). Batch-first tensors among the
    arguments (dim >= 2, first dim = rows: hidden states, masks, position embeddings) and this
    layer's key/value cache are cut to the active rows; the rows never interact in a block."""
    forward = type(block).forward
    index = torch.tensor(active, dtype=torch.long, device=cached.device)

    def cut(value):
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == rows:
            return value[index]
        if isinstance(value, tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
            return tuple(cut(v) for v in value)
        if isinstance(value, DynamicCache) and layer < len(value.layers):
            own = value.layers[layer]
            if holds_states(own) and own.keys.shape[0] == rows:
                value.layers[layer] = view_layer(own, lambda t: t[index])  # read by this block only
        return value

    def partial(*args, **kwargs):
        out = forward(block, *[cut(a) for a in args], **{k: cut(v) for k, v in kwargs.items()})
        first = out[0] if isinstance(out, tuple) else out
        full = cached.to(first.dtype).unsqueeze(0).repeat(rows, 1, 1)
        full[index] = first
        return (full, *out[1:]) if isinstance(out, tuple) else full

    return partial


def view_cache(cache: DynamicCache, view) -> DynamicCache:
    """A cache whose layers hold views of ``cache``'s tensors. Safe to extend: cache layers
    rebind their tensors on update (concatenation) and never write into them."""
    out = copy.copy(cache)
    out.layers = [view_layer(layer, view) if holds_states(layer) else copy.copy(layer) for layer in cache.layers]
    return out


def holds_states(layer) -> bool:
    return getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel() > 0


def view_layer(layer, view):
    """A copy of one cache layer whose keys and values are ``view`` of the original's."""
    clone = copy.copy(layer)
    clone.keys, clone.values = view(layer.keys), view(layer.values)
    return clone


def sliced_view(cache: DynamicCache, length: int) -> DynamicCache:
    return view_cache(cache, lambda t: t[..., :length, :])


def batch_view(cache: DynamicCache, rows: int) -> DynamicCache:
    """The same prefix for every row, without copying it ``rows`` times."""
    return view_cache(cache, lambda t: t.expand(rows, *t.shape[1:]))
