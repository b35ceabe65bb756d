"""Token analysis: NIE of the embeddings at each prompt position, grouped by the position's role.

Patching the embedding output at one position changes the benign run only where the harmful
token differs, because an embedding depends on its own token alone (plus, in some families, a
position embedding that is shared by both prompts). For token-aligned minimal pairs the NIE is
therefore exactly zero outside the differing span, and the engine returns those rows without a
forward pass; the analysis is informative about *which* differing tokens carry the signal.

Roles, in plotting order: ``template`` (chat-template tokens before the user's request),
``before_span`` and ``after_span`` (request tokens around the span), ``span`` (from the first
to the last position where the harmful and benign ids differ, inclusive; identical tokens
enclosed by differing ones count as span) and ``post`` (the post-instruction tokens). Unpaired
prompts differ in length: only their right-aligned post-instruction positions correspond, so
every other position of the base (benign) prompt is ``unaligned`` and is not patched.
The figure of this analysis is :mod:`harmmed.figures.tokens`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..constants import UNALIGNED
from ..datasets.prompts import EncodedPair, chat_text, read_pairs
from ..patching.patches import Patch
from .mediation import Cell, run_cells
from .pairs import clean_runs

if TYPE_CHECKING:
    from ..patching.engine import MediationEngine
    from ..patching.patches import Run

log = logging.getLogger("harmmed")


# ---------------------------------------------------------------- roles
def request_token_bounds(tokenizer, request: str) -> tuple[list[int], int]:
    """Ids of the templated request and the number of template tokens before the request.

    A token is a template token when its characters end at or before the request's first
    character, so a token that carries a leading space into the request counts as request.
    """
    text = chat_text(tokenizer, request)
    start = text.rfind(request)
    if start < 0:
        raise ValueError(f"chat template does not contain the request verbatim: {request!r}")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    n_template = sum(1 for _start, stop in encoded["offset_mapping"] if stop <= start)
    return list(encoded["input_ids"]), n_template


def differing_positions(harmful_ids: Sequence[int], benign_ids: Sequence[int]) -> list[int]:
    """Positions where two token-aligned prompts differ."""
    return [i for i, (h, b) in enumerate(zip(harmful_ids, benign_ids)) if h != b]


def aligned_roles(n_tokens: int, n_template: int, diff: Sequence[int],
                  post: Sequence[int]) -> list[str]:
    """Roles of a token-aligned prompt; span beats post and template if they ever overlap."""
    post_set = set(post)
    first, last = (min(diff), max(diff)) if diff else (n_tokens, n_tokens)
    roles = []
    for p in range(n_tokens):
        if first <= p <= last:
            roles.append("span")
        elif p in post_set:
            roles.append("post")
        elif p < n_template:
            roles.append("template")
        else:
            roles.append("before_span" if p < first else "after_span")
    return roles


def unpaired_roles(harmful_ids: Sequence[int], benign_ids: Sequence[int],
                   post_positions: Sequence[int]) -> list[str]:
    """Roles over the base (benign) prompt: right-aligned post positions, the rest unaligned."""
    shift = len(benign_ids) - len(harmful_ids)
    post = {p + shift for p in post_positions}
    return ["post" if p in post else UNALIGNED for p in range(len(benign_ids))]


def position_roles(tokenizer, request: str, harmful_ids: Sequence[int], benign_ids: Sequence[int],
                   post_positions: Sequence[int], noise_span: Sequence[int] | None = None) -> list[str]:
    """Role of each prompt position (indexing the NIE's base: the benign run, or in noise mode
    the corrupted harmful run, whose ``noise_span`` is the span).

    ``request`` is the harmful request; its encoding must reproduce ``harmful_ids``, so a
    stale pairs file cannot silently mislabel positions.
    """
    if noise_span is None and len(harmful_ids) != len(benign_ids):
        return unpaired_roles(harmful_ids, benign_ids, post_positions)
    ids, n_template = request_token_bounds(tokenizer, request)
    if ids != list(harmful_ids):
        raise ValueError(f"the request {request!r} does not encode to the stored harmful ids")
    span = noise_span if noise_span is not None else differing_positions(harmful_ids, benign_ids)
    return aligned_roles(len(ids), n_template, span, post_positions)


# ---------------------------------------------------------------- rows
def token_rows(engine: MediationEngine, pair: EncodedPair, roles: Sequence[str],
               runs: tuple[Run, Run] | None = None, progress=None) -> list[dict]:
    """NIE of the embedding output at each aligned prompt position, one row per metric.

    Identical positions (every non-span position of a minimal pair) cost no forward pass: the
    engine recognises the identity patch and returns the benign outcome, an effect of 0.
    """
    runs = runs if runs is not None else clean_runs(engine, pair)
    cells = [
        (Cell("NIE", "residual", -1, 1, str(p)), (Patch("residual", -1, (p,)),))
        for p, role in enumerate(roles) if role != UNALIGNED
    ]
    rows = list(run_cells(engine, pair, cells, runs, progress=progress))
    for row in rows:
        row["role"] = roles[int(row["positions"])]
    return rows


def pair_requests(pairs_path: str | Path) -> dict[str, str]:
    """Harmful request text by pair id (the inputs file stores ids only)."""
    return {row["pair_id"]: row["harmful"] for row in read_pairs(pairs_path)}


def pair_roles(tokenizer, pairs: Sequence[EncodedPair], requests: Mapping[str, str]) -> dict[str, list[str]]:
    """Role of every position of every pair, by pair id (see :func:`position_roles`)."""
    return {p.pair_id: position_roles(tokenizer, requests[p.pair_id], p.harmful_ids, p.benign_ids,
                                      p.post_positions, p.noise_span) for p in pairs}


def aligned_count(roles: Sequence[str]) -> int:
    """Interventions one pair costs: its aligned positions."""
    return sum(role != UNALIGNED for role in roles)
