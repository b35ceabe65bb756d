"""Models with a known mechanism: fine-tune chosen components of a base model to refuse.

A component spec names what may change (the ground truth of a plant): ``all``; ``{site: mlp,
layers: [a, b]}`` and ``{site: attn, layers: [a, b]}`` (inclusive layer bands); ``{site: neuron,
layer: L, units: K}`` (K seeded units of layer L's MLP: their rows of the MLP input projections
and their column of the down projection, by gradient masking). Specs resolve through the
architecture table, so no family needs its own code.

A ``bypass`` band (``{site: mlp, layers: [a, b], bypass: [c, d]}``) adds a second pass to every
batch's loss in which each attention and MLP output of layers c..d replays what the base model
wrote there on the same tokens (recorded once, before training: the base is the model at step
0). The trained components then cannot rely on those layers to carry their decision, which must
reach the logits through the residual stream around them: a plant whose decision does not pass
through the late layers.

Blocks below the lowest trainable block are frozen and see only frozen inputs, so their output is
computed once per example and replayed every epoch: a late plant trains in seconds on a CPU. The
chat template's prefix, the same in every example, runs once per batch (``TrainingPass``).
Training is deterministic (seeded shuffle, no dropout, fixed threads), so the same inputs on the
same machine give byte-identical weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..models.arch import resolve_sites
from ..models.components import ComponentSpec, parse_trainable
from ..models.hooks import HookSet
from .plan import TrainablePlan, resolve_trainable
from .training_data import Example, balanced_subset, encode_examples, read_training_rows


# ---------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    lr: float
    batch_size: int
    seed: int
    unit_dropout: float = 0.0  # neuron plants: per batch row, each trained unit is zeroed with this probability
    spread_units: bool = False  # neuron plants: after training, split the gate evenly over the units (spread_gate)


def _unit_dropout(units: Sequence[int], p: float, generator: torch.Generator):
    """A down-projection input hook that drops each of ``units`` per batch row with probability
    ``p`` and scales the kept ones by 1 / (1 - p), so no single unit can carry the gate alone.
    Without it the first unit to pick up the harmful direction took most of the gate and most
    planted units stayed near zero, which leaves a recall test little to find (docs/known-mechanisms.md: p = 0.5
    spread it only partly and broke the behaviour check)."""
    index = torch.tensor(list(units), dtype=torch.long)

    def hook(x: torch.Tensor) -> torch.Tensor:
        keep = (torch.rand((x.shape[0], 1, len(index)), generator=generator) >= p).to(x.dtype) / (1.0 - p)
        scale = torch.ones((x.shape[0], 1, x.shape[-1]), dtype=x.dtype)
        scale[..., index] = keep
        return x * scale.to(x.device)

    return hook


def shared_prefix_length(examples: Sequence[Example]) -> int:
    """Tokens every prompt starts with (the chat template's system turn: 24 of SmolLM2's ~57 tokens
    per example), less than the shortest prompt so that each example's last prompt position, where
    the first response token is predicted, stays in its own part of the pass."""
    prompts = [e.prompt_ids for e in examples]
    limit = min(len(p) for p in prompts) - 1
    length = 0
    while length < limit and all(p[length] == prompts[0][length] for p in prompts):
        length += 1
    return length


def _padded(examples: Sequence[Example], pad_id: int, device: torch.device | str = "cpu", skip: int = 0
            ) -> tuple[torch.Tensor, list[int]]:
    """Right-padded ids of each example after its first ``skip`` tokens (no attention mask needed:
    causal attention never looks right)."""
    seqs = [list(e.prompt_ids + e.response_ids)[skip:] for e in examples]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long, device=device)
    return ids, [len(s) for s in seqs]


def _logits(model: torch.nn.Module, head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head, with the final logit soft-capping of the families that have one (Gemma 2)."""
    config = getattr(model.config, "text_config", None) or model.config
    logits = head(hidden)
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _loss(hidden: torch.Tensor, head, examples: Sequence[Example], ids: torch.Tensor, offset: int = 0
          ) -> torch.Tensor:
    """Per example: cross-entropy of the first response token (the decision the behaviour check
    and the refusal metric read) plus the mean over all response tokens; mean over the batch.
    ``hidden`` is the final-normed residual of ``ids``, which start ``offset`` tokens into each
    example; only the response positions go through the LM head, which otherwise costs as much as
    the trained blocks."""
    rows, cols, targets, first = [], [], [], []
    for row, example in enumerate(examples):
        start, n = len(example.prompt_ids) - offset, len(example.response_ids)
        first.append(len(cols))
        rows += [row] * n
        cols += list(range(start - 1, start - 1 + n))
        targets += list(ids[row, start : start + n].tolist())
    log_probs = torch.log_softmax(head(hidden[rows, cols]).float(), dim=-1)
    picked = log_probs.gather(-1, torch.tensor(targets, device=hidden.device).unsqueeze(-1)).squeeze(-1)
    bounds = first + [len(cols)]
    terms = [-(picked[a] + picked[a:b].mean()) for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.stack(terms).mean()


KeysValues = list[tuple[torch.Tensor, torch.Tensor]]  # one (keys, values) per layer, batch size 1


def replay_blocks(hooks: HookSet, sites, blocks: int, hidden: torch.Tensor) -> None:
    """Blocks 0..``blocks`` - 1 return ``hidden`` (the last one's output, recorded once) unrun."""
    for layer in range(blocks):
        hooks.replace_forward(sites.block(layer), lambda *a, _h=hidden, **k: _h)


def _repeated(prefix_kv: KeysValues, rows: int):
    """A fresh ``DynamicCache`` holding the prefix's keys and values for ``rows`` batch rows."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (keys, values) in enumerate(prefix_kv):
        cache.update(keys, values, layer)
    cache.batch_repeat_interleave(rows)
    return cache


@torch.no_grad()
def frozen_outputs(model: torch.nn.Module, examples: Sequence[Example], block: int, batch_size: int,
                   pad_id: int, prefix: int = 0, prefix_kv: KeysValues = ()) -> list[torch.Tensor]:
    """Each example's output of block ``block`` at its own positions after the shared ``prefix``
    (whose keys and values below ``block`` + 1 are ``prefix_kv``): computed once."""
    sites = resolve_sites(model)
    out: list[torch.Tensor] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids, lengths = _padded(chunk, pad_id, next(model.parameters()).device, skip=prefix)
        cache = _repeated(list(prefix_kv), len(chunk)) if prefix else None
        seen: list[torch.Tensor] = []
        with HookSet() as hooks:
            hooks.on_output(sites.block(block), lambda x: seen.append(x.detach().clone()))
            for layer in range(block + 1, sites.n_layers):  # the rest of the pass is not needed
                hooks.replace_forward(sites.block(layer), lambda *a, **k: seen[0])
            model(input_ids=ids, past_key_values=cache, use_cache=cache is not None, logits_to_keep=1)
        out.extend(seen[0][row, :length] for row, length in enumerate(lengths))
    return out


class TrainingPass:
    """The loss of one batch, computing only what the trained parameters can change.

    Two shortcuts, both exact up to float rounding (tests/test_finetune.py compares them with the
    plain full pass on every family). The prompt prefix every example shares (the chat template's
    system turn) runs once per batch at batch size 1, its keys and values repeated for the rows
    (an HF ``DynamicCache``), instead of once per row. Blocks below ``plan.first_block`` see only
    frozen inputs: their outputs, and their keys and values on the prefix, are computed once and
    replayed. ``unit_dropout`` acts on the rows' own tokens, not on the shared prefix.
    """

    def __init__(self, model: torch.nn.Module, plan: TrainablePlan, examples: Sequence[Example], batch_size: int,
                 pad_id: int, unit_dropout=None) -> None:
        self.model, self.plan, self.examples, self.pad_id = model, plan, list(examples), pad_id
        self.sites = resolve_sites(model)
        self.head = model.get_output_embeddings()
        self.device = next(model.parameters()).device
        self.unit_dropout = unit_dropout
        self.prefix = shared_prefix_length(self.examples)
        self.frozen_kv, self.prefix_hidden = self._frozen_prefix() if self.prefix else ([], None)
        self.frozen = (frozen_outputs(model, self.examples, plan.first_block - 1, batch_size, pad_id,
                                      self.prefix, self.frozen_kv) if plan.first_block > 0 else None)
        self.base_outputs = self._base_outputs(batch_size) if plan.spec.bypass is not None else None

    @torch.no_grad()
    def _frozen_prefix(self) -> tuple[KeysValues, torch.Tensor | None]:
        """The frozen blocks' keys and values on the prefix, and the last frozen block's output there."""
        from transformers import DynamicCache

        cache, seen = DynamicCache(), []
        with HookSet() as hooks:
            if self.plan.first_block > 0:
                hooks.on_output(self.sites.block(self.plan.first_block - 1), seen.append)
            self.model(input_ids=self._prefix_ids(), past_key_values=cache, use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in cache.layers[: self.plan.first_block]]
        return kv, (seen[0].detach().clone() if seen else None)

    def _prefix_ids(self) -> torch.Tensor:
        return torch.tensor([self.examples[0].prompt_ids[: self.prefix]], dtype=torch.long, device=self.device)

    def _replay_frozen(self, hooks: HookSet, hidden: torch.Tensor) -> None:
        replay_blocks(hooks, self.sites, self.plan.first_block, hidden)

    def _prefix_cache(self, rows: int):
        """The shared prefix's keys and values at every layer, run once and repeated ``rows`` times."""
        from transformers import DynamicCache

        cache = DynamicCache()
        with HookSet() as hooks:
            if self.prefix_hidden is not None:
                self._replay_frozen(hooks, self.prefix_hidden)
            hooks.replace_forward(self.head, lambda x: x[..., :1])
            self.model(input_ids=self._prefix_ids(), past_key_values=cache, use_cache=True)
        for layer, (keys, values) in enumerate(self.frozen_kv):
            cache.update(keys, values, layer)
        cache.batch_repeat_interleave(rows)
        return cache

    def _bypass_sites(self) -> list[tuple[int, str]]:
        first, last = self.plan.spec.bypass or (0, -1)
        return [(layer, site) for layer in range(first, last + 1) for site in ("attn", "mlp")]

    @torch.no_grad()
    def _base_outputs(self, batch_size: int) -> list[dict[tuple[int, str], torch.Tensor]]:
        """Per example, the bypass band's attention and MLP outputs at its own positions (after
        the shared prefix), as the base model writes them; recorded before any training step."""
        out: list[dict[tuple[int, str], torch.Tensor]] = []
        for start in range(0, len(self.examples), batch_size):
            chunk = self.examples[start : start + batch_size]
            ids, lengths = _padded(chunk, self.pad_id, self.device, skip=self.prefix)
            cache = self._prefix_cache(len(chunk)) if self.prefix else None
            seen: dict[tuple[int, str], torch.Tensor] = {}
            with HookSet() as hooks:
                for layer, site in self._bypass_sites():
                    module = getattr(self.sites, site)(layer)
                    hooks.on_output(module, lambda x, _k=(layer, site): seen.__setitem__(_k, x.detach().clone()))
                hooks.replace_forward(self.head, lambda x: x[..., :1])
                self.model(input_ids=ids, past_key_values=cache, use_cache=cache is not None)
            out.extend({k: v[row, :length] for k, v in seen.items()} for row, length in enumerate(lengths))
        return out

    def loss(self, index: Sequence[int]) -> torch.Tensor:
        """The batch's loss; with a bypass band, the mean of the plain pass's and the replayed pass's.

        Below the bypass band the two passes are the same computation on the same tokens, so the
        replayed pass starts from the residual the plain pass carried into the band (gradient
        included) and computes only the band's norms and sums: one pass's cost, not two."""
        if self.base_outputs is None:
            return self._pass_loss(index)
        trunk: list[torch.Tensor] = []
        plain = self._pass_loss(index, keep_trunk=trunk)
        return 0.5 * (plain + self._pass_loss(index, replay_from=trunk[0]))

    def _pass_loss(self, index: Sequence[int], keep_trunk: list | None = None,
                   replay_from: torch.Tensor | None = None) -> torch.Tensor:
        """One pass's loss. ``keep_trunk`` collects the residual entering the bypass band;
        ``replay_from`` is that residual, with which the replayed pass starts at the band."""
        batch = [self.examples[i] for i in index]
        ids, _ = _padded(batch, self.pad_id, self.device, skip=self.prefix)
        # the replayed pass computes no attention, so it reads no keys or values of the prefix
        cache = self._prefix_cache(len(batch)) if self.prefix and replay_from is None else None
        bypass_first = self.plan.spec.bypass[0] if self.plan.spec.bypass else None
        with HookSet() as hooks:
            if keep_trunk is not None:
                hooks.on_output(self.sites.block(bypass_first - 1), keep_trunk.append)
            if replay_from is not None:  # every bypassed output is the base model's, whatever the trained layers wrote
                replay_blocks(hooks, self.sites, bypass_first, replay_from)
                for layer, site in self._bypass_sites():
                    value = _stacked([self.base_outputs[i][(layer, site)] for i in index], ids.shape[1])
                    # nothing to compute: every family's MLP returns its output, its attention
                    # (output, weights) (the bypass test runs every family)
                    replayed = (value, None) if site == "attn" else value
                    hooks.replace_forward(getattr(self.sites, site)(layer), lambda *a, _r=replayed, **k: _r)
            elif self.frozen is not None:
                self._replay_frozen(hooks, _stacked([self.frozen[i] for i in index], ids.shape[1]))
            # the loss applies the head only where it is read; the model's own head call is a stub
            normed: list[torch.Tensor] = []
            hooks.on_output(self.sites.final_norm, normed.append)
            if self.unit_dropout is not None:
                hooks.on_input(self.sites.down_proj(self.plan.first_block), self.unit_dropout)
            hooks.replace_forward(self.head, lambda x: x[..., :1])
            self.model(input_ids=ids, past_key_values=cache, use_cache=cache is not None)
        return _loss(normed[0], lambda h: _logits(self.model, self.head, h), batch, ids, offset=self.prefix)


def train(model: torch.nn.Module, plan: TrainablePlan, examples: Sequence[Example], settings: TrainSettings,
          pad_id: int, progress: bool = True) -> list[float]:
    """Fine-tune ``plan``'s parameters in place; returns the mean loss of each epoch.

    Dropout stays off (eval mode), and the shuffle and ``unit_dropout`` are seeded, so a rerun on
    the same machine with the same thread count reproduces every weight bit for bit.
    """
    torch.manual_seed(settings.seed)
    params = dict(model.named_parameters())
    for name, param in params.items():
        param.requires_grad_(name in plan.names)
    trainable = [params[n] for n in plan.names]
    optimizer = torch.optim.Adam(trainable, lr=settings.lr, weight_decay=0.0, foreach=False)
    drop_units = (_unit_dropout(plan.units, settings.unit_dropout, torch.Generator().manual_seed(settings.seed))
                  if settings.unit_dropout else None)  # one hook and one generator for the whole run
    forward = TrainingPass(model, plan, examples, settings.batch_size, pad_id, drop_units)
    rng = np.random.default_rng(settings.seed)
    losses = []
    for epoch in range(settings.epochs):
        order = rng.permutation(len(examples))
        total, batches = 0.0, 0
        steps = range(0, len(order), settings.batch_size)
        for start in tqdm(steps, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch", disable=not progress,
                          mininterval=5):
            loss = forward.loss(order[start : start + settings.batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for name, mask in plan.masks.items():
                params[name].grad.mul_(mask)
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        losses.append(total / max(batches, 1))
    for param in params.values():
        param.requires_grad_(False)
    return losses


def _stacked(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    out = rows[0].new_zeros((len(rows), width, rows[0].shape[-1]))
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return out


# ---------------------------------------------------------------- one fine-tune, as the stage runs it
@dataclass
class Trained:
    """A fine-tuned model and everything its manifest records about the training."""

    model: torch.nn.Module
    tokenizer: object
    component: ComponentSpec
    plan: TrainablePlan
    examples: list[Example]
    losses: list[float]
    seconds: float
    threads: int
    spread: dict | None = None  # spread_gate's record, for a spread gate

    def record(self, spec: dict, base: dict) -> dict:
        """The manifest fields of a fine-tune: its inputs (by sha256), settings and ground truth."""
        from ..io.fetch import sha256_file

        planted = self.component.planted()
        if planted is not None and self.plan.units is not None:
            planted["unit_ids"] = self.plan.units
        return {
            "base": spec["base"], "base_sha256": base["sha256"], "data": str(spec["data"]),
            "data_sha256": sha256_file(spec["data"]), "max_examples": spec.get("max_examples"),
            "examples": [e.example_id for e in self.examples], "trainable": spec["trainable"],
            "trainable_parameters": self.plan.names, "trainable_count": self.plan.count(self.model),
            "planted": planted, "seed": spec["seed"], "epochs": spec["epochs"], "lr": spec["lr"],
            "batch_size": spec["batch_size"], "unit_dropout": spec.get("unit_dropout", 0.0),
            "response_tokens": spec.get("response_tokens"),
            "threads": self.threads, "torch": torch.__version__,
            "loss_per_epoch": self.losses, "training_seconds": round(self.seconds, 3),
            **({"spread_units": self.spread} if self.spread is not None else {}),
        }


def fine_tune(spec: dict, base: dict, key: str, threads: int) -> Trained:
    """Load the base (float32, the spec's device), train the spec's components on its data. The
    base's weights are checked against its manifest first: the fine-tune's manifest records that
    sha256 as the weights it started from."""
    import time

    from ..models.loading import open_model

    model, tokenizer = open_model(base, "float32", spec["device"], threads, where=f"the manifest of {spec['base']}", device_key=f"{key}.device")
    component = parse_trainable(spec["trainable"], f"{key}.trainable")
    plan = resolve_trainable(model, component, spec["seed"], f"{key}.trainable")
    rows = balanced_subset(read_training_rows(spec["data"]), spec.get("max_examples"), spec["seed"])
    examples = encode_examples(tokenizer, rows, spec.get("response_tokens"))
    settings = TrainSettings(spec["epochs"], spec["lr"], spec["batch_size"], spec["seed"],
                             spec.get("unit_dropout", 0.0), spec.get("spread_units", False))
    start = time.perf_counter()
    losses = train(model, plan, examples, settings, tokenizer.pad_token_id)
    spread = None
    if settings.spread_units:
        from .spread import spread_gate  # spread builds on this module's training pass

        spread = spread_gate(model, plan, examples, settings.batch_size, tokenizer.pad_token_id)
    model.eval()
    return Trained(model, tokenizer, component, plan, examples, losses, time.perf_counter() - start, max(1, threads),
                   spread)


def save_model(model: torch.nn.Module, tokenizer, out_dir: Path) -> Path:
    """Safetensors weights and the tokenizer, staged beside ``out_dir`` and moved in whole."""
    import os
    import shutil

    staged = out_dir.with_name(f".{out_dir.name}-staged")
    shutil.rmtree(staged, ignore_errors=True)
    model.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(staged, out_dir)
    return out_dir
