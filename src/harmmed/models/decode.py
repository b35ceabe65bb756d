"""Greedy decoding under whatever hooks are attached to the model.

Shared by the generation analysis (decoding under the gating interventions) and the fine-tunes'
behaviour check (decoding the plain model), so it lives with the model, below both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


# ---------------------------------------------------------------- generation
def stop_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-turn ids: the tokenizer's eos plus the model's generation-config eos (chat models
    often end turns with a token other than the tokenizer's eos)."""
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return frozenset(ids)


def greedy_decode(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: frozenset[int]
                  ) -> list[list[int]]:
    """Argmax decoding with a key/value cache of equal-length prompts, one batch row each (rows
    may repeat a prompt and differ only through a row-wise intervention hook); a row's stop
    token, if reached, is kept.

    Written out rather than ``model.generate`` so no generation-config default (repetition
    penalty, sampling flags) can slip in, and so every forward pass visibly goes through the
    hooks of the surrounding intervention. On a CPU one decoding step of a small batch is bound
    by reading the weights, so many rows cost about as much as one.
    """
    import torch
    from transformers import DynamicCache

    if len({len(p) for p in prompts}) != 1:
        raise ValueError("greedy_decode: prompts of one batch must have equal lengths (no padding)")
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    step_ids = torch.tensor([list(p) for p in prompts], dtype=torch.long, device=device)
    rows = len(prompts)
    outs: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = model(input_ids=step_ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            tokens = logits[:, -1].argmax(dim=-1).tolist()
            for row, token in enumerate(tokens):
                if not done[row]:
                    outs[row].append(int(token))
                    done[row] = token in stop
            if all(done):
                break
            step_ids = torch.tensor([[t] for t in tokens], dtype=torch.long, device=device)
    return outs
