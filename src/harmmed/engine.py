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

Many interventions on the same base run go into one forward pass, one batch row each; the batch
size follows a memory budget and halves on out-of-memory without losing work. Final-layer neuron
patches skip the full unembedding where it is provably a short combination of precomputed rows
(``_NeuronHead``). The plain path
(``fast=False``) patches the full sequence with no reuse at all and is the reference the tests
compare against.
"""

from __future__ import annotations

import copy
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from transformers import DynamicCache

from .arch import Sites, resolve_sites
from .hooks import HookSet
from .metrics import METRICS, outcome_metrics, target_logprobs

Site = Literal["residual", "attn", "mlp", "neuron", "heads"]
SITES: tuple[str, ...] = ("residual", "attn", "mlp", "neuron", "heads")
UNIT_SITES = ("neuron", "heads")  # sites read at a projection's input: MLP units, attention head dims


@dataclass(frozen=True)
class Patch:
    """Set one mediator, at some positions of the base run, to its value in another run.

    ``layer == -1`` with ``site == "residual"`` is the embedding output (the input of block 0).
    ``neuron`` is the MLP down-projection input and ``heads`` the attention output-projection
    input; ``units`` restricts a patch to some of their dimensions (``None``: every one).
    ``from_base`` freezes the mediator at the base run's own clean value (severed paths).
    """

    site: Site
    layer: int
    positions: tuple[int, ...]
    units: tuple[int, ...] | None = None
    from_base: bool = False


Intervention = tuple[Patch, ...]


@dataclass
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
    _prefix_caches: dict[int, DynamicCache] = field(default_factory=dict, repr=False)
    _head_basis: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # see _NeuronHead

    @property
    def n_target(self) -> int:
        return self.target_ids.shape[0]


@dataclass
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
class _Planned:
    index: int
    patches: Intervention
    start_pos: int  # first position whose value changes
    start_layer: int  # lowest block that must run


class MediationEngine:
    """Runs clean passes and patched passes for one model."""

    def __init__(
        self,
        model: torch.nn.Module,
        refusal_ids: Sequence[int],
        memory_budget_mb: float = 2048,
        max_batch_size: int = 128,
    ) -> None:
        self.model = model.eval()
        self.sites: Sites = resolve_sites(model)
        self.device = next(model.parameters()).device
        self.refusal_ids = torch.tensor(sorted(refusal_ids), dtype=torch.long, device=self.device)
        self.memory_budget_bytes = memory_budget_mb * 2**20
        self.max_batch_size = max_batch_size
        self.stats = {"forward_passes": 0, "token_layers": 0, "oom_backoffs": 0, "low_rank_head_rows": 0}
        self._neuron_head: _NeuronHead | None | bool = False  # False: not built yet; None: not worth it

    # ------------------------------------------------------------------ clean runs
    def _site_modules(self, site: str, layer: int) -> torch.nn.Module:
        if site == "residual":
            return self.sites.block(max(layer, 0))
        if site == "attn":
            return self.sites.attn(layer)
        if site == "mlp":
            return self.sites.mlp(layer)
        if site == "heads":
            return self.sites.o_proj(layer)
        return self.sites.down_proj(layer)

    def _attach(self, hooks: HookSet, site: str, layer: int, fn) -> None:
        """Route ``fn`` to the tensor that *is* the mediator (output or input, per site)."""
        module = self._site_modules(site, layer)
        if site in UNIT_SITES or (site == "residual" and layer == -1):
            hooks.on_input(module, fn)
        else:
            hooks.on_output(module, fn)

    def run(self, prompt_ids: Sequence[int], target_ids: Sequence[int]) -> Run:
        """Clean pass recording every mediator at every position."""
        return self.runs([(prompt_ids, target_ids)])[0]

    @torch.inference_mode()
    def noised_runs(self, prompt_ids: Sequence[int], target_ids: Sequence[int], span: Sequence[int],
                    scale: float, samples: int, seed: int) -> NoisedRuns:
        """Clean runs of one prompt with Gaussian noise (sd = ``scale`` x the std of the input
        embedding matrix) added to the embedding output at ``span``, ``samples`` seeded draws.
        The noise enters at the embedding site of the table (block 0's input), so every later
        pass on such a run as base adds the same draw."""
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
                    cache=_view_cache(cache, lambda t, r=row: t[r : r + 1]) if sliceable else None)
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def last_residuals(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """Residual stream after every layer (index 0 = embeddings) at each prompt's last
        position: (n_prompts, n_layers + 1, d_model). Prompt tokens only, batched like runs()."""
        keys = [("residual", layer) for layer in range(-1, self.sites.n_layers)]
        out = np.empty((len(prompts), len(keys), self.sites.d_model), dtype=np.float32)
        for group in _equal_shapes([(len(p), 0) for p in prompts], self.max_batch_size):
            acts, _, _ = self._prefixed_pass([list(prompts[i]) for i in group], keys, len(prompts[group[0]]), 0)
            stacked = torch.stack([acts[key][:, -1] for key in keys], dim=1)
            out[group] = stacked.float().cpu().numpy()
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
                past = cache if chunk.start == 0 else _batch_view(cache, batch_rows)
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
            keys += [(site, layer) for site in ("residual", "attn", "mlp", "neuron", "heads")]
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
    ) -> np.ndarray:
        """Outcomes of each intervention: array (n_interventions, len(METRICS)).

        Positions index the base run; the source run is right-aligned to it (identical for
        token-aligned minimal pairs, the post-instruction tokens for unpaired prompts). A base
        or source of noise draws (:class:`NoisedRuns`) gives the mean over its draws.
        """
        if isinstance(base, NoisedRuns) or isinstance(source, NoisedRuns):
            return self._patch_draws(base, source, interventions, fast, progress)
        if not torch.equal(base.target_ids, source.target_ids):
            raise ValueError("base and source runs must score the same target tokens")
        length = base.prompt_len + base.n_target
        offset = self._offset(base, source)
        for intervention in interventions:
            for p in intervention:
                if p.positions and not 0 <= min(p.positions) <= max(p.positions) < length:
                    raise ValueError(f"patch {p}: positions must lie in 0..{length - 1} (prompt and target)")
                if p.positions and not p.from_base and min(p.positions) + offset < 0:
                    raise ValueError(f"patch {p}: base position {min(p.positions)} has no right-aligned source "
                                     f"position (the source prompt is {-offset} tokens shorter)")
        out = np.empty((len(interventions), len(METRICS)), dtype=np.float64)
        if not fast:
            for i, intervention in enumerate(interventions):
                planned = _Planned(i, intervention, start_pos=0, start_layer=0)
                out[i] = self._forward(base, source, [planned], reuse=False)[0]
                if progress is not None:
                    progress.update(1)
            return out

        plans: list[_Planned] = []
        first_of: dict[Intervention, int] = {}  # interventions that trim to the same patches run once
        copies: list[tuple[int, int]] = []
        for i, intervention in enumerate(interventions):
            plan = self._plan(i, intervention, base, source)
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
        for batch in self._batches(plans, base):
            self._run_with_backoff(base, source, batch, out, progress)
        for i, first in copies:
            out[i] = out[first]
        return out

    def _patch_draws(self, base, source, interventions: Sequence[Intervention], fast: bool, progress) -> np.ndarray:
        """Mean outcome over noise draws; the same draw never pairs with itself."""
        bases = base.samples if isinstance(base, NoisedRuns) else None
        sources = source.samples if isinstance(source, NoisedRuns) else None
        n = len(bases if bases is not None else sources)
        if bases is not None and sources is not None and len(sources) != n:
            raise ValueError("noise draws of base and source differ in number")
        ys = [self.patch(bases[i] if bases is not None else base, sources[i] if sources is not None else source,
                         interventions, fast) for i in range(n)]
        if progress is not None:
            progress.update(len(interventions))
        return np.mean(ys, axis=0)

    def _offset(self, base: Run, source: Run) -> int:
        return source.prompt_len - base.prompt_len

    def _values(self, run: Run, patch: Patch, positions: Sequence[int]) -> torch.Tensor:
        values = run.acts[(patch.site, patch.layer)][list(positions)]
        if patch.units is not None:
            values = values[:, list(patch.units)]
        return values

    def _plan(self, index: int, intervention: Intervention, base: Run, source: Run) -> _Planned | None:
        offset = self._offset(base, source)
        # In the final block a patched position changes only its own output, and only the last
        # prompt position's output reaches the metrics, so earlier positions there are inert.
        final_only = all(p.layer == self.sites.n_layers - 1 for p in intervention)
        floor = base.prompt_len - 1 if final_only else 0
        fed = base.ids.shape[1]  # the last target token is never fed, so a patch there is inert
        intervention = tuple(
            Patch(p.site, p.layer, tuple(q for q in p.positions if floor <= q < fed), p.units, p.from_base)
            for p in intervention
        )
        start_pos = math.inf
        for p in intervention:
            if p.from_base or not p.positions:
                continue
            src = self._values(source, p, [q + offset for q in p.positions])
            same = (src == self._values(base, p, p.positions)).flatten(1).all(dim=1)
            changed = [q for q, s in zip(p.positions, same.tolist()) if not s]
            if changed:
                start_pos = min(start_pos, min(changed))
        if start_pos is math.inf:
            return None
        # Recompute from the last prompt position at the latest: its logits are the first the
        # metrics read, so a pass starting later would score misaligned logits.
        start_pos = min(int(start_pos), base.prompt_len - 1)
        trimmed = tuple(
            Patch(p.site, p.layer, tuple(q for q in p.positions if q >= start_pos), p.units, p.from_base)
            for p in intervention
        )
        trimmed = tuple(p for p in trimmed if p.positions)
        start_layer = min(p.layer + 1 if p.site == "residual" else p.layer for p in trimmed)
        return _Planned(index, trimmed, start_pos, start_layer)

    def _row_bytes(self, base: Run, start_pos: int) -> float:
        """Rough activation memory of one batch row: the budget only needs the right scale."""
        seq = base.ids.shape[1] - start_pos
        kv = 2 * self.sites.n_layers * base.ids.shape[1] * self.sites.d_model
        width = 8 * self.sites.d_model + 3 * self.sites.d_mlp
        vocab = self.model.get_output_embeddings().weight.shape[0]
        elem = next(self.model.parameters()).element_size()
        return elem * (seq * width + kv) + 4 * 3 * base.n_target * vocab

    def _batches(self, plans: list[_Planned], base: Run) -> Iterable[list[_Planned]]:
        """Group by start position (one shared prefix cache per batch), rows sorted by start
        layer; each block then computes only the rows that have started (see _forward)."""
        by_pos: dict[int, list[_Planned]] = defaultdict(list)
        for plan in plans:
            by_pos[plan.start_pos].append(plan)
        for start_pos in sorted(by_pos):
            group = sorted(by_pos[start_pos], key=lambda p: (p.start_layer, p.index))
            limit = int(max(1, min(self.max_batch_size, self.memory_budget_bytes // self._row_bytes(base, start_pos))))
            for i in range(0, len(group), limit):
                yield group[i : i + limit]

    def _run_with_backoff(self, base: Run, source: Run, batch: list[_Planned], out: np.ndarray, progress) -> None:
        pending = [batch]
        while pending:
            chunk = pending.pop()
            try:
                ys = self._forward(base, source, chunk, reuse=True)
            except torch.OutOfMemoryError:
                if len(chunk) == 1:
                    raise
                self.stats["oom_backoffs"] += 1
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                half = len(chunk) // 2
                pending += [chunk[half:], chunk[:half]]
                continue
            for plan, y in zip(chunk, ys):
                out[plan.index] = y
            if progress is not None:
                progress.update(len(chunk))

    def _prefix_cache(self, base: Run, start_pos: int) -> DynamicCache:
        """Key/value cache of the base run's first ``start_pos`` tokens: a view into the clean
        pass's cache, or (sliding-window models) one prefix pass, computed once."""
        if start_pos not in base._prefix_caches:
            if base.cache is not None:
                base._prefix_caches[start_pos] = _sliced_view(base.cache, start_pos)
            else:
                cache = DynamicCache(config=self.model.config)
                with HookSet() as hooks:
                    self._add_noise(hooks, base.embed_noise, 0)
                    self.model(input_ids=base.ids[:, :start_pos], past_key_values=cache, use_cache=True,
                               logits_to_keep=1)
                self.stats["forward_passes"] += 1
                self.stats["token_layers"] += start_pos * self.sites.n_layers
                base._prefix_caches[start_pos] = cache
        return base._prefix_caches[start_pos]

    def _stop(self, base: Run, batch: list[_Planned], reuse: bool) -> int:
        """End of the recomputed span. A patch confined to the final block changes only the
        positions it patches (no later block can carry it sideways), so later positions keep
        their clean outputs: final-layer sweeps need one token, not the whole target."""
        length = base.ids.shape[1]
        final = self.sites.n_layers - 1
        if not reuse or any(p.layer != final for plan in batch for p in plan.patches):
            return length
        last_patched = max(q for plan in batch for p in plan.patches for q in p.positions)
        return min(length, max(last_patched + 1, base.prompt_len))

    def _head_for(self, base: Run, batch: list[_Planned]):
        """A replacement LM-head forward for a batch that recomputes only the last prompt
        position, when some rows patch only a few final-layer neurons (see _NeuronHead)."""
        final = self.sites.n_layers - 1
        units = [plan.patches[0].units if len(plan.patches) == 1 and plan.patches[0].site == "neuron"
                 and plan.patches[0].layer == final and not plan.patches[0].from_base else None for plan in batch]
        if not any(u is not None and len(u) <= _NeuronHead.MAX_UNITS for u in units):
            return None
        if self._neuron_head is False:
            self._neuron_head = _NeuronHead.build(self)
        if self._neuron_head is None:
            return None
        return self._neuron_head.forward_for(base, units)

    @torch.inference_mode()
    def _forward(self, base: Run, source: Run, batch: list[_Planned], reuse: bool) -> np.ndarray:
        start_pos = min(p.start_pos for p in batch) if reuse else 0
        row_starts = [p.start_layer if reuse else 0 for p in batch]
        start_layer = min(row_starts)
        stop = self._stop(base, batch, reuse)
        rows = len(batch)
        ids = base.ids[:, start_pos:stop].expand(rows, -1)
        offset = self._offset(base, source)

        # Gather every patch into per-site index lists so one hook serves the whole batch.
        dense: dict[tuple[str, int], list] = defaultdict(lambda: [[], [], []])
        sparse: dict[tuple[str, int], list] = defaultdict(lambda: [[], [], [], []])
        for row, plan in enumerate(batch):
            for p in plan.patches:
                positions = [q for q in p.positions if start_pos <= q < stop]
                if not positions:
                    continue
                run = base if p.from_base else source
                values = self._values(run, p, [q + (0 if p.from_base else offset) for q in positions])
                local = [q - start_pos for q in positions]
                if p.units is None:
                    slot = dense[(p.site, p.layer)]
                    slot[0] += [row] * len(local)
                    slot[1] += local
                    slot[2].append(values)
                else:
                    n = len(p.units)
                    slot = sparse[(p.site, p.layer)]
                    slot[0] += [row] * (len(local) * n)
                    slot[1] += [q for q in local for _ in range(n)]
                    slot[2] += list(p.units) * len(local)
                    slot[3].append(values.reshape(-1))

        cache = None
        if reuse and start_pos > 0:
            cache = _batch_view(self._prefix_cache(base, start_pos), rows)

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
                hooks.replace_forward(self.sites.block(layer), _partial_block(self.sites.block(layer), layer, active,
                                                                              rows, cached))
            for key in sorted(set(dense) | set(sparse)):
                remap = {r: i for i, r in enumerate(started[key[1]])} if key[1] in started and key[0] != "residual" else None
                self._attach(hooks, *key, _setter(_remapped(dense.get(key), remap), _remapped(sparse.get(key), remap),
                                                  self.device))
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


class _NeuronHead:
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
    """

    MAX_UNITS = 64  # beyond this the fit costs more than it saves
    FIT_TOLERANCE = 2e-6  # relative residual of the fit; float32 rounding leaves about 2e-7

    def __init__(self, engine: MediationEngine, directions: torch.Tensor, unit_logits: torch.Tensor,
                 offset: torch.Tensor, origin_logits: torch.Tensor) -> None:
        self.engine = engine
        self.directions = directions  # (d_mlp, d_model): N(w_u) - b
        self.unit_logits = unit_logits  # (d_mlp, vocab): head(N(w_u) - b) - head(0)
        self.offset = offset  # (d_model,): b = N(0)
        self.origin_logits = origin_logits  # (vocab,): head(b)

    @classmethod
    @torch.inference_mode()
    def build(cls, engine: MediationEngine) -> _NeuronHead | None:
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

    def forward_for(self, base: Run, units: list[tuple[int, ...] | None]):
        head = self.engine.model.get_output_embeddings()
        full = type(head).forward
        stats = self.engine.stats
        base_input, base_logits = self._base(base)

        def forward(x: torch.Tensor) -> torch.Tensor:  # x: (rows, 1, d_model), the last prompt position
            inputs = x[:, -1]
            out = torch.empty(x.shape[0], 1, self.unit_logits.shape[1], dtype=x.dtype, device=x.device)
            exact = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
            by_size: dict[int, list[int]] = defaultdict(list)
            for row, chosen in enumerate(units):
                if chosen is not None and len(chosen) <= self.MAX_UNITS:
                    by_size[len(chosen)].append(row)
            for size, rows in by_size.items():
                index = torch.tensor([units[r] for r in rows], dtype=torch.long, device=x.device)  # (n, size)
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

    @torch.inference_mode()
    def _base(self, base: Run) -> tuple[torch.Tensor, torch.Tensor]:
        """The base run's head input (minus b) at the last prompt position, and its logits
        (minus head(b)): the direction every row keeps."""
        if base._head_basis is None:
            head = self.engine.model.get_output_embeddings()
            final = self.engine.sites.n_layers - 1
            residual = base.acts[("residual", final)][base.prompt_len - 1].view(1, 1, -1)
            direction = self.engine.sites.final_norm(residual)[0, 0] - self.offset
            # one two-row product: head(0) from the same matmul as head(direction), so their
            # difference carries no rounding from differently shaped products
            logits = head(torch.stack([direction, torch.zeros_like(direction)]).unsqueeze(1))[:, 0]
            base._head_basis = (direction, logits[0] - logits[1])
        return base._head_basis


def _partial_block(block: torch.nn.Module, layer: int, active: list[int], rows: int, cached: torch.Tensor):
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
            if _holds_states(own) and own.keys.shape[0] == rows:
                value.layers[layer] = _view_layer(own, lambda t: t[index])  # read by this block only
        return value

    def partial(*args, **kwargs):
        out = forward(block, *[cut(a) for a in args], **{k: cut(v) for k, v in kwargs.items()})
        first = out[0] if isinstance(out, tuple) else out
        full = cached.to(first.dtype).unsqueeze(0).repeat(rows, 1, 1)
        full[index] = first
        return (full, *out[1:]) if isinstance(out, tuple) else full

    return partial


def _remapped(slot: list | None, remap: dict[int, int] | None) -> list | None:
    """A setter's index lists with batch rows renumbered within a block's active rows."""
    if slot is None or remap is None:
        return slot
    return [[remap[r] for r in slot[0]], *slot[1:]]


def _view_cache(cache: DynamicCache, view) -> DynamicCache:
    """A cache whose layers hold views of ``cache``'s tensors. Safe to extend: cache layers
    rebind their tensors on update (concatenation) and never write into them."""
    out = copy.copy(cache)
    out.layers = [_view_layer(layer, view) if _holds_states(layer) else copy.copy(layer) for layer in cache.layers]
    return out


def _holds_states(layer) -> bool:
    return getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel() > 0


def _view_layer(layer, view):
    """A copy of one cache layer whose keys and values are ``view`` of the original's."""
    clone = copy.copy(layer)
    clone.keys, clone.values = view(layer.keys), view(layer.values)
    return clone


def _sliced_view(cache: DynamicCache, length: int) -> DynamicCache:
    return _view_cache(cache, lambda t: t[..., :length, :])


def _batch_view(cache: DynamicCache, rows: int) -> DynamicCache:
    """The same prefix for every row, without copying it ``rows`` times."""
    return _view_cache(cache, lambda t: t.expand(rows, *t.shape[1:]))


def _setter(dense: list | None, sparse: list | None, device: torch.device):
    """Hook body writing one batch's patched values into a site's activation."""

    def as_index(xs: list[int]) -> torch.Tensor:
        return torch.tensor(xs, dtype=torch.long, device=device)

    d_args = (as_index(dense[0]), as_index(dense[1]), torch.cat(dense[2])) if dense else None
    s_args = (as_index(sparse[0]), as_index(sparse[1]), as_index(sparse[2]), torch.cat(sparse[3])) if sparse else None

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        if d_args is not None:
            x[d_args[0], d_args[1]] = d_args[2].to(x.dtype)
        if s_args is not None:
            x[s_args[0], s_args[1], s_args[2]] = s_args[3].to(x.dtype)
        return x

    return fn


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
