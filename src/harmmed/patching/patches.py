"""What an intervention is: patches with an explicit value source, clean runs, and planning.

Planning decides, before any forward pass, which positions and layers an intervention can
change (see the engine's docstring for why skipping the rest is exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from transformers import DynamicCache

from ..constants import METRICS

Site = Literal["residual", "attn", "mlp", "neuron", "attn_dims"]

SOURCE_RUN = "source"  # the value the mediator has in the source run (right-aligned to the base)
FROZEN_BASE = "base"  # the base run's own clean value: the mediator is frozen (severed paths)


@dataclass(frozen=True)
class Given:
    """Fixed values, one per patched unit (or per dimension when a patch has no ``units``),
    written at every patched position: e.g. a mean over prompts, for mean ablation."""

    values: tuple[float, ...]


ValueSource = Literal["source", "base"] | Given


@dataclass(frozen=True)
class Patch:
    """Set one mediator, at some positions of the base run, to a value taken from ``value_from``.

    ``layer == -1`` with ``site == "residual"`` is the embedding output (the input of block 0).
    ``neuron`` is the MLP down-projection input and ``attn_dims`` the attention output-projection
    input; ``units`` restricts a patch to some of their dimensions (``None``: every one).
    ``value_from`` says where the written value comes from: the source run (``SOURCE_RUN``, the
    default), the base run itself (``FROZEN_BASE``) or fixed values (:class:`Given`).
    """

    site: Site
    layer: int
    positions: tuple[int, ...]
    units: tuple[int, ...] | None = None
    value_from: ValueSource = SOURCE_RUN


Intervention = tuple[Patch, ...]


@dataclass(eq=False)  # identity semantics: the engine keys its per-run caches by the run
class Run:
    """One clean teacher-forced run: the ids, every mediator's activation, and the outcomes.

    The last target token is scored but never fed: nothing reads the logits after it, and by
    causality leaving it out changes no other position.
    """

    ids: torch.Tensor  # (1, prompt_len + n_target - 1): the tokens fed to the model
    prompt_len: int
    target_ids: torch.Tensor  # (n_target,)
    acts: dict[tuple[str, int], torch.Tensor]  # (site, layer) -> (seq_len, width)
    y: dict[str, float]
    target_logprobs: torch.Tensor  # (n_target,) log-probability of each target token
    cache: DynamicCache | None = field(default=None, repr=False)  # the clean pass's keys/values
    # noise mode: (fed_len, d_model) added to the embedding output on every pass of this run
    embed_noise: torch.Tensor | None = field(default=None, repr=False)

    @property
    def n_target(self) -> int:
        return self.target_ids.shape[0]


@dataclass(eq=False)
class NoisedRuns:
    """Corrupted runs of one prompt, one per noise draw (Meng et al.'s causal tracing). Where a
    run is expected it stands for their average: ``y`` is the mean outcome, and a patch with it
    as base or source is the mean of the patch over the draws."""

    samples: list[Run]
    seed: int
    sd: float  # absolute noise sd on the embedding output

    @property
    def y(self) -> dict[str, float]:
        return {m: float(np.mean([run.y[m] for run in self.samples])) for m in METRICS}

    @property
    def prompt_len(self) -> int:
        return self.samples[0].prompt_len

    @property
    def target_ids(self) -> torch.Tensor:
        return self.samples[0].target_ids


@dataclass
class Planned:
    """One intervention as it will run: its effective patches, and where recomputation starts."""

    index: int
    patches: Intervention
    start_pos: int  # first position whose value changes
    start_layer: int  # lowest block that must run


def offset(base: Run, source: Run) -> int:
    """How far the source run is shifted right of the base (right-aligned prompts)."""
    return source.prompt_len - base.prompt_len


def clean_values(run: Run, patch: Patch, positions: Sequence[int]) -> torch.Tensor:
    values = run.acts[(patch.site, patch.layer)][list(positions)]
    if patch.units is not None:
        values = values[:, list(patch.units)]
    return values


def patch_values(patch: Patch, base: Run, source: Run, positions: Sequence[int]) -> torch.Tensor:
    """The values ``patch`` writes at these base positions, from its value source."""
    if isinstance(patch.value_from, Given):
        clean = base.acts[(patch.site, patch.layer)]
        return clean.new_tensor(patch.value_from.values).unsqueeze(0).repeat(len(positions), 1)
    if patch.value_from == FROZEN_BASE:
        return clean_values(base, patch, positions)
    shift = offset(base, source)
    return clean_values(source, patch, [q + shift for q in positions])


def read_length(base: Run, first_token_only: bool = False) -> int:
    """Positions of ``base`` the scored logits can depend on: every fed token (the last target
    token is never fed), or with ``first_token_only`` the prompt alone."""
    return base.prompt_len if first_token_only else base.ids.shape[1]


def plan_intervention(index: int, intervention: Intervention, base: Run, source: Run, n_layers: int,
                      first_token_only: bool = False) -> Planned | None:
    """The patches of one intervention that can change anything, from the first position whose
    value differs; None for an identity patch (every written value equals the base value).
    ``first_token_only``: only the first target token is scored, so no position after the
    last prompt position can change anything."""
    # In the final block a patched position changes only its own output, and only the last
    # prompt position's output reaches the metrics, so earlier positions there are inert.
    final_only = all(p.layer == n_layers - 1 for p in intervention)
    floor = base.prompt_len - 1 if final_only else 0
    reach = read_length(base, first_token_only)
    intervention = tuple(replace(p, positions=tuple(q for q in p.positions if floor <= q < reach))
                         for p in intervention)
    start_pos = math.inf
    for p in intervention:
        if p.value_from == FROZEN_BASE or not p.positions:
            continue
        src = patch_values(p, base, source, p.positions)
        same = (src == clean_values(base, p, p.positions)).flatten(1).all(dim=1)
        changed = [q for q, s in zip(p.positions, same.tolist()) if not s]
        if changed:
            start_pos = min(start_pos, min(changed))
    if start_pos is math.inf:
        return None
    # Recompute from the last prompt position at the latest: its logits are the first the
    # metrics read, so a pass starting later would score misaligned logits.
    start_pos = min(int(start_pos), base.prompt_len - 1)
    trimmed = tuple(replace(p, positions=tuple(q for q in p.positions if q >= start_pos)) for p in intervention)
    trimmed = tuple(p for p in trimmed if p.positions)
    start_layer = min(p.layer + 1 if p.site == "residual" else p.layer for p in trimmed)
    return Planned(index, trimmed, start_pos, start_layer)
