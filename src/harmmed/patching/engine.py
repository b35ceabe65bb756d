"""The intervention engine: exact activation patching, batched, recomputing only what can change.

A patch replaces a mediator's activation in a *base* run with its value from a *source* run (for
NIE the base is benign and the source harmful; for NDE the reverse). Two facts make most of the
naive work unnecessary, and both are exact, not approximations:

* Causality over positions. Positions before the first position whose patched value actually
  differs from the base value are untouched in every layer, so the pass resumes from the base
  run's key/value cache at that position ``t`` and computes only positions ``>= t``. For minimal
  pairs this also skips the shared template prefix automatically, because both runs carry
  identical activations there.
* Causality over layers. Layers below a row's lowest patched layer see only base activations,
  so that row reads the cached base residual stream there, and each block runs only on the rows
  that have started (rows never interact inside a block).

The engine reads as planning (``patches.plan_intervention``: where each intervention's
recomputation starts), batching (``batching``: many interventions on the same base run go into
one forward pass, one batch row each, sized by a memory budget and halved on out-of-memory
without losing work) and execution (``_forward``, over the cache views). Final-layer neuron
patches skip the full unembedding where it is provably a short combination of precomputed rows
(``NeuronHead``). The plain path (``fast=False``) patches the full sequence with no reuse at all
and is the reference the tests compare against.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np
import torch
from transformers import DynamicCache

from ..constants import FIRST_TOKEN_METRICS, METRICS, SITES
from ..models.arch import Sites, resolve_sites
from ..models.hooks import HookSet
from .batching import BatchLimits, RowCost, batches, run_with_backoff
from .cache_views import batch_view, partial_block, sliced_view, view_cache
from .lowrank_head import NeuronHead
from .metrics import outcome_metrics, target_logprobs
from .patches import (FROZEN_BASE, SOURCE_RUN, Intervention, NoisedRuns, Planned, Run, patch_values, plan_intervention,
                      read_length)
from .site_writes import SiteWrites


@dataclass(frozen=True)
class EngineSettings:
    """The ``engine`` config section, typed: how much memory a patched batch may take."""

    memory_budget_mb: float
    max_batch_size: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EngineSettings:
        return cls(cfg["engine"]["memory_budget_mb"], cfg["engine"]["max_batch_size"])


class MediationEngine:
    """Runs clean passes and patched passes for one model."""

    def __init__(
        self,
        model: torch.nn.Module,
        refusal_ids: Sequence[int],
        memory_budget_mb: float = 2048,
        max_batch_size: int = 128,
        scored: Sequence[str] = METRICS,
    ) -> None:
        self.model = model.eval()
        self.scored = _checked_metrics(scored)  # what patch() scores unless told otherwise
        self.sites: Sites = resolve_sites(model)
        self.device = next(model.parameters()).device
        self.refusal_ids = torch.tensor(sorted(refusal_ids), dtype=torch.long, device=self.device)
        self.memory_budget_bytes = memory_budget_mb * 2**20
        self.max_batch_size = max_batch_size
        self.stats = {"forward_passes": 0, "token_layers": 0, "oom_backoffs": 0, "low_rank_head_rows": 0}
        # Prefix key/value caches per clean run (by start position), dropped with the run.
        self._prefix_caches: WeakKeyDictionary[Run, dict[int, DynamicCache]] = WeakKeyDictionary()

    # ------------------------------------------------------------------ clean runs
    def _attach(self, hooks: HookSet, site: str, layer: int, fn) -> None:
        """Route ``fn`` to the tensor that *is* the mediator (the module and side the
        architecture table declares for the site)."""
        module, side = self.sites.hook_point(site, layer)
        hooks.attach(module, side, fn)

    def run(self, prompt_ids: Sequence[int], target_ids: Sequence[int]) -> Run:
        """Clean pass recording every mediator at every position."""
        return self.runs([(prompt_ids, target_ids)])[0]

    @torch.inference_mode()
    def noised_runs(self, prompt_ids: Sequence[int], target_ids: Sequence[int], span: Sequence[int],
                    scale: float, samples: int, seed: int) -> NoisedRuns:
        """Clean runs of one prompt with Gaussian noise (sd = ``scale`` x the std of the input
        embedding matrix) added to the embedding output at ``span``, ``samples`` seeded draws.
        The noise enters at the table's embedding site (block 0's input), and every later pass
        with such a run as base adds the same draw."""
        if not span or min(span) < 0 or max(span) >= len(prompt_ids):
            raise ValueError(f"noise span {list(span)} must be non-empty and lie in the prompt (0..{len(prompt_ids) - 1})")
        param = next(self.model.parameters())
        sd = scale * float(self.model.get_input_embeddings().weight.float().std())
        generator = torch.Generator().manual_seed(int(seed))  # CPU draws: the same on every device
        fed = len(_fed_ids(prompt_ids, target_ids))
        out = []
        for _ in range(samples):
            noise = torch.zeros(fed, self.sites.d_model)
            noise[list(span)] = torch.randn(len(span), self.sites.d_model, generator=generator) * sd
            noise = noise.to(device=self.device, dtype=param.dtype)
            with HookSet() as hooks:
                self._add_noise(hooks, noise, 0)
                run = self.runs([(prompt_ids, target_ids)])[0]
            run.embed_noise = noise
            out.append(run)
        return NoisedRuns(out, int(seed), sd)

    def _add_noise(self, hooks: HookSet, noise: torch.Tensor | None, start: int) -> None:
        """Add a run's embedding noise to a pass over its positions ``start`` onwards. Attached
        before any patch, so a patch of the embeddings overrides the noise where it applies."""
        if noise is not None:
            self._attach(hooks, "residual", -1, lambda x: x + noise[start : start + x.shape[1]].to(x.dtype))

    @torch.inference_mode()
    def runs(self, prompts: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[Run]:
        """Clean runs of many (prompt, target) pairs: equal-length ones share one batched pass,
        and their common prefix (the chat template; for a minimal pair everything before the
        differing span) is computed once."""
        out: list[Run | None] = [None] * len(prompts)
        for group in _equal_shapes([(len(p), len(t)) for p, t in prompts], self.max_batch_size):
            sequences = [_fed_ids(*prompts[i]) for i in group]
            prompt_len = len(prompts[group[0]][0])
            acts, logits, cache = self._prefixed_pass(sequences, self.mediator_keys(), prompt_len,
                                                      len(prompts[group[0]][1]))
            sliceable = cache is not None and not any(getattr(layer, "is_sliding", False) for layer in cache.layers)
            for row, i in enumerate(group):
                target = torch.tensor(list(prompts[i][1]), dtype=torch.long, device=self.device)
                per_token = target_logprobs(logits[row : row + 1], target)[0]
                y = self._score(logits[row : row + 1], per_token.unsqueeze(0))
                out[i] = Run(
                    ids=torch.tensor([sequences[row]], dtype=torch.long, device=self.device), prompt_len=prompt_len,
                    target_ids=target, acts={key: value[row] for key, value in acts.items()},
                    y={m: float(y[m][0]) for m in METRICS}, target_logprobs=per_token,
                    cache=view_cache(cache, lambda t, r=row: t[r : r + 1]) if sliceable else None)
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def residuals_at(self, prompts: Sequence[Sequence[int]], from_end: Mapping[str, Sequence[int]]
                     ) -> dict[str, np.ndarray]:
        """Residual stream after every layer (index 0 = embeddings) at named positions, each
        given per prompt as an offset from its end (1 = the last token): name -> (n_prompts,
        n_layers + 1, d_model). Prompt tokens only, one pass per batch for every position."""
        keys = [("residual", layer) for layer in range(-1, self.sites.n_layers)]
        out = {name: np.empty((len(prompts), len(keys), self.sites.d_model), dtype=np.float32) for name in from_end}
        for group in _equal_shapes([(len(p), 0) for p in prompts], self.max_batch_size):
            acts, _, _ = self._prefixed_pass([list(prompts[i]) for i in group], keys, len(prompts[group[0]]), 0)
            rows = torch.arange(len(group))
            for name, offsets in from_end.items():
                at = torch.tensor([len(prompts[i]) - offsets[i] for i in group])
                out[name][group] = torch.stack([acts[key][rows, at] for key in keys], dim=1).float().cpu().numpy()
        return out

    def _prefixed_pass(self, sequences: list[list[int]], keys: list[tuple[str, int]], prompt_len: int,
                       n_target: int) -> tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor, DynamicCache]:
        """Equal-length sequences: their common prefix in one single-row pass, then the rest of
        every sequence in one batched pass on top of its cache. Returns every key's activation
        (rows, seq_len, width), the logits from the last prompt position on, and the cache."""
        rows = len(sequences)
        shared = len(os.path.commonprefix(sequences)) if rows > 1 else 0
        shared = min(shared, prompt_len - 1)  # every logit we need comes from the batched pass
        ids = torch.tensor(sequences, dtype=torch.long, device=self.device)
        parts: list[dict[tuple[str, int], torch.Tensor]] = []
        cache = DynamicCache(config=self.model.config)
        logits = None
        for chunk, batch_rows in ((slice(0, shared), 1), (slice(shared, ids.shape[1]), rows)):
            if chunk.stop <= chunk.start:
                continue
            recorded: dict[tuple[str, int], torch.Tensor] = {}
            with HookSet() as hooks:
                for key in keys:
                    self._attach(hooks, *key, lambda x, _k=key, _r=recorded: _r.__setitem__(_k, x.detach().clone()))
                past = cache if chunk.start == 0 else batch_view(cache, batch_rows)
                logits = self.model(input_ids=ids[:batch_rows, chunk], past_key_values=past, use_cache=True,
                                    logits_to_keep=max(1, n_target) if chunk.stop == ids.shape[1] else 1).logits
                cache = past
            parts.append(recorded)
            self.stats["forward_passes"] += 1
            self.stats["token_layers"] += batch_rows * (chunk.stop - chunk.start) * self.sites.n_layers
        if len(parts) == 1:
            return parts[0], logits, cache
        prefix, rest = parts
        acts = {key: torch.cat([prefix[key].expand(rows, -1, -1), rest[key]], dim=1) for key in keys}
        return acts, logits, cache
    def mediator_keys(self) -> list[tuple[str, int]]:
        keys = [("residual", -1)]
        for layer in range(self.sites.n_layers):
            keys += [(site, layer) for site in SITES]
        return keys

    def _score(self, logits: torch.Tensor, per_token: torch.Tensor) -> dict[str, torch.Tensor]:
        return outcome_metrics(logits[:, 0], per_token, self.refusal_ids)

    # ------------------------------------------------------------------ patched runs
    def patch(
        self,
        base: Run,
        source: Run,
        interventions: Sequence[Intervention],
        fast: bool = True,
        progress=None,
        scored: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Outcomes of each intervention: array (n_interventions, len(METRICS)).

        Positions index the base run; the source run is right-aligned to it (identical for
        token-aligned minimal pairs, the post-instruction tokens for unpaired prompts). A base
        or source of noise draws (:class:`NoisedRuns`) gives the mean over its draws. Metrics
        left out of ``scored`` (by default the engine's own ``scored``) are NaN: when every
        scored metric is one of FIRST_TOKEN_METRICS, only the last prompt position's logits are
        read, so no pass carries a patch past it (a stage that reads the refusal metric alone
        does a fraction of the work).
        """
        scored = self.scored if scored is None else _checked_metrics(scored)
        if isinstance(base, NoisedRuns) or isinstance(source, NoisedRuns):
            return self._patch_draws(base, source, interventions, fast, progress, scored)
        if not torch.equal(base.target_ids, source.target_ids):
            raise ValueError("base and source runs must score the same target tokens")
        length = base.prompt_len + base.n_target
        shift = source.prompt_len - base.prompt_len
        for intervention in interventions:
            for p in intervention:
                if p.positions and not 0 <= min(p.positions) <= max(p.positions) < length:
                    raise ValueError(f"patch {p}: positions must lie in 0..{length - 1} (prompt and target)")
                if p.positions and p.value_from == SOURCE_RUN and min(p.positions) + shift < 0:
                    raise ValueError(f"patch {p}: base position {min(p.positions)} has no right-aligned source "
                                     f"position (the source prompt is {-shift} tokens shorter)")
        out = np.empty((len(interventions), len(METRICS)), dtype=np.float64)
        if not fast:
            for i, intervention in enumerate(interventions):
                planned = Planned(i, intervention, start_pos=0, start_layer=0)
                out[i] = self._forward(base, source, [planned], reuse=False)[0]
                if progress is not None:
                    progress.update(1)
            return _scored_only(out, scored, interventions)
        first_token_only = set(scored) <= set(FIRST_TOKEN_METRICS)

        plans: list[Planned] = []
        first_of: dict[Intervention, int] = {}  # interventions that trim to the same patches run once
        copies: list[tuple[int, int]] = []
        for i, intervention in enumerate(interventions):
            plan = plan_intervention(i, intervention, base, source, self.sites.n_layers, first_token_only)
            if plan is None or plan.patches in first_of:
                if plan is None:  # every patched value equals the base value: an identity patch
                    out[i] = [base.y[m] for m in METRICS]
                else:
                    copies.append((i, first_of[plan.patches]))
                if progress is not None:
                    progress.update(1)
            else:
                first_of[plan.patches] = i
                plans.append(plan)
        cost = RowCost.of(self.model, self.sites.n_layers, self.sites.d_model, self.sites.d_mlp)
        limits = BatchLimits(self.memory_budget_bytes, self.max_batch_size)
        for batch in batches(plans, base, cost, limits):
            run_with_backoff(batch, lambda chunk: self._forward(base, source, chunk, True, first_token_only), out,
                             self.stats, self.device, progress)
        for i, first in copies:
            out[i] = out[first]
        return _scored_only(out, scored, interventions)

    def _patch_draws(self, base, source, interventions: Sequence[Intervention], fast: bool, progress,
                     scored: Sequence[str]) -> np.ndarray:
        """Mean outcome over noise draws (draw i of the base pairs with draw i of the source)."""
        bases = base.samples if isinstance(base, NoisedRuns) else None
        sources = source.samples if isinstance(source, NoisedRuns) else None
        n = len(bases if bases is not None else sources)
        if bases is not None and sources is not None and len(sources) != n:
            raise ValueError("noise draws of base and source differ in number")
        ys = [self.patch(bases[i] if bases is not None else base, sources[i] if sources is not None else source,
                         interventions, fast, scored=scored) for i in range(n)]
        if progress is not None:
            progress.update(len(interventions))
        return np.mean(ys, axis=0)

    def _prefix_cache(self, base: Run, start_pos: int) -> DynamicCache:
        """Key/value cache of the base run's first ``start_pos`` tokens: a view into the clean
        pass's cache, or (sliding-window models) one prefix pass, computed once."""
        caches = self.prefix_caches(base)
        if start_pos not in caches:
            if base.cache is not None:
                caches[start_pos] = sliced_view(base.cache, start_pos)
            else:
                cache = DynamicCache(config=self.model.config)
                with HookSet() as hooks:
                    self._add_noise(hooks, base.embed_noise, 0)
                    self.model(input_ids=base.ids[:, :start_pos], past_key_values=cache, use_cache=True,
                               logits_to_keep=1)
                self.stats["forward_passes"] += 1
                self.stats["token_layers"] += start_pos * self.sites.n_layers
                caches[start_pos] = cache
        return caches[start_pos]

    def prefix_caches(self, run: Run) -> dict[int, DynamicCache]:
        """The prefix caches built so far for ``run``, by length (benchmarks clear them)."""
        return self._prefix_caches.setdefault(run, {})

    @cached_property
    def _neuron_head(self) -> NeuronHead | None:
        """Built on first use; None where it would not pay (see NeuronHead.build)."""
        return NeuronHead.build(self)

    def _stop(self, base: Run, batch: list[Planned], reuse: bool, first_token_only: bool = False) -> int:
        """End of the recomputed span. A patch confined to the final block changes only the
        positions it patches (no later block can carry it sideways), so later positions keep
        their clean outputs: final-layer sweeps need one token, not the whole target. When only
        the first target token is scored, nothing after the last prompt position is read."""
        length = read_length(base, first_token_only)
        final = self.sites.n_layers - 1
        if not reuse or any(p.layer != final for plan in batch for p in plan.patches):
            return length
        last_patched = max(q for plan in batch for p in plan.patches for q in p.positions)
        return min(length, max(last_patched + 1, base.prompt_len))

    def _head_for(self, base: Run, batch: list[Planned]):
        """A replacement LM-head forward for a batch that recomputes only the last prompt
        position, when some rows patch only a few final-layer neurons (see NeuronHead)."""
        final = self.sites.n_layers - 1
        units = [plan.patches[0].units if len(plan.patches) == 1 and plan.patches[0].site == "neuron"
                 and plan.patches[0].layer == final and plan.patches[0].value_from != FROZEN_BASE else None for plan in batch]
        if not any(u is not None and len(u) <= NeuronHead.MAX_UNITS for u in units):
            return None
        if self._neuron_head is None:
            return None
        return self._neuron_head.forward_for(base, units)

    @torch.inference_mode()
    def _forward(self, base: Run, source: Run, batch: list[Planned], reuse: bool,
                 first_token_only: bool = False) -> np.ndarray:
        start_pos = min(p.start_pos for p in batch) if reuse else 0
        row_starts = [p.start_layer if reuse else 0 for p in batch]
        start_layer = min(row_starts)
        stop = self._stop(base, batch, reuse, first_token_only)
        rows = len(batch)
        ids = base.ids[:, start_pos:stop].expand(rows, -1)

        # Gather every patch per site so one hook serves the whole batch.
        writes: dict[tuple[str, int], SiteWrites] = defaultdict(SiteWrites)
        for row, plan in enumerate(batch):
            for p in plan.patches:
                positions = [q for q in p.positions if start_pos <= q < stop]
                if positions:
                    writes[(p.site, p.layer)].add(row, [q - start_pos for q in positions], p.units,
                                                  patch_values(p, base, source, positions))

        cache = None
        if reuse and start_pos > 0:
            cache = batch_view(self._prefix_cache(base, start_pos), rows)

        # Blocks below a row's start layer would only reproduce the base run: rows that have not
        # started read the cached base residual instead, and a block runs on the started rows.
        started = {layer: [r for r, s in enumerate(row_starts) if s <= layer]
                   for layer in range(start_layer, max(row_starts))}
        head = self._head_for(base, batch) if reuse and stop == base.prompt_len else None
        with HookSet() as hooks:
            self._add_noise(hooks, base.embed_noise, start_pos)
            for layer in range(start_layer):
                cached = base.acts[("residual", layer)][start_pos:stop].unsqueeze(0).expand(rows, -1, -1)
                hooks.replace_forward(self.sites.block(layer), lambda *a, _h=cached, **k: _h)
            for layer, active in started.items():
                cached = base.acts[("residual", layer)][start_pos:stop]
                hooks.replace_forward(self.sites.block(layer), partial_block(self.sites.block(layer), layer, active,
                                                                              rows, cached))
            for key in sorted(writes):
                remap = {r: i for i, r in enumerate(started[key[1]])} if key[1] in started and key[0] != "residual" else None
                self._attach(hooks, *key, writes[key].renumbered(remap).setter(self.device))
            if head is not None:
                hooks.replace_forward(self.model.get_output_embeddings(), head)
            logits = self.model(
                input_ids=ids,
                past_key_values=cache,
                use_cache=cache is not None,
                logits_to_keep=stop - base.prompt_len + 1,
            ).logits
        self.stats["forward_passes"] += 1
        self.stats["token_layers"] += ids.shape[1] * sum(self.sites.n_layers - s for s in row_starts)
        fresh = target_logprobs(logits, base.target_ids[: stop - base.prompt_len + 1])
        kept = base.target_logprobs[fresh.shape[1] :].unsqueeze(0).expand(rows, -1)
        y = self._score(logits, torch.cat([fresh, kept], dim=1))
        return torch.stack([y[m] for m in METRICS], dim=1).cpu().numpy()


def _scored_only(out: np.ndarray, scored: Sequence[str], interventions: Sequence[Intervention]) -> np.ndarray:
    """``out`` with NaN in the columns of unscored metrics, which is how the row builder knows to
    write no row for them; so a NaN in a scored column (logits that are not finite) is an error,
    never a row that quietly goes missing."""
    for j, metric in enumerate(METRICS):
        if metric not in scored:
            out[:, j] = np.nan
        elif (missing := np.flatnonzero(np.isnan(out[:, j]))).size:
            i = int(missing[0])
            raise FloatingPointError(f"the {metric} metric is NaN under intervention {list(interventions[i])}: "
                                     "the model's logits are not finite (try dtype float32)")
    return out


def _checked_metrics(scored: Sequence[str]) -> tuple[str, ...]:
    """``scored`` in METRICS order; anything outside METRICS, or nothing, is refused."""
    unknown = [m for m in scored if m not in METRICS]
    if unknown or not scored:
        raise ValueError(f"scored metrics must be a non-empty subset of {METRICS}, got {list(scored)}")
    return tuple(m for m in METRICS if m in scored)


def _fed_ids(prompt_ids: Sequence[int], target_ids: Sequence[int]) -> list[int]:
    if not target_ids:
        raise ValueError("a clean run needs at least one target token to score")
    return list(prompt_ids) + list(target_ids)[:-1]


def _equal_shapes(shapes: list[tuple[int, int]], max_rows: int) -> list[list[int]]:
    """Indices grouped by shape, in order of first appearance, at most ``max_rows`` per group
    (one batched pass each)."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, shape in enumerate(shapes):
        groups[shape].append(i)
    return [group[start : start + max_rows] for group in groups.values() for start in range(0, len(group), max_rows)]
