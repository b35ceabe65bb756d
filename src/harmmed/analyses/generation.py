"""Analysis 6: greedy generation with and without the gating intervention, judged.

Each held-out pair contributes its harmful and its benign prompt; each prompt is generated under
every condition:

* ``none``: no intervention;
* ``gate_mean``: the gating units (top-k final-layer neurons from the gating stage) held at their
  mean over benign prompts, at every position of every forward pass (prompt and generated
  tokens), i.e. the harmful signal they carry is removed;
* ``gate_zero``: the same units held at 0 (ablation);
* ``random_mean``: k random units of the same layer held at their own benign means (a control
  for "any k units held fixed").

Benign prompts go through every condition too: a gate that only breaks the model would also
lower the benign compliance rate. Generation is greedy and token by token with a key/value
cache, one prompt at a time with its conditions as batch rows (no padding, so no padding-side
effects), stopping at the model's end-of-turn tokens. The rates table is
:mod:`harmmed.stats.rates`, its figure :mod:`harmmed.figures.generation`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..constants import PROMPT_KINDS, RATE_COLUMNS
from ..models.decode import greedy_decode, stop_ids
from ..models.judge import COMPLIANCE, Judge
from ..stats.rates import canonical_rate_order, wilson_interval

if TYPE_CHECKING:
    from ..datasets.prompts import EncodedPair
    from ..patching.engine import MediationEngine

log = logging.getLogger("harmmed")

RECORD_FIELDS = ("prompt_id", "prompt_kind", "category", "condition", "prompt_ids", "output_ids", "text",
                 "judge", "verdict")
GATING_KEYS = ("layer", "units", "benign_mean", "random_units", "random_mean")
JUDGE_CHUNK = 8  # prompts per judge call, so the progress bar moves during a model judge
_SENTINEL = "HARMMED_REQUEST_SENTINEL_5c1e"


@dataclass(frozen=True)
class Condition:
    """Units of the ``neuron`` site of one layer held at fixed values (none for ``none``)."""

    name: str
    layer: int | None = None
    units: tuple[int, ...] = ()
    values: tuple[float, ...] = ()


NO_INTERVENTION = Condition("none")


# ---------------------------------------------------------------- conditions
def read_gating(path: str | Path) -> dict[str, Any]:
    """Read ``gating_units.json`` and check its shape, naming the file and key on a defect."""
    gating = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [k for k in GATING_KEYS if k not in gating]
    if missing:
        raise ValueError(f"{path}: gating units lack key(s) {', '.join(missing)}")
    for units, values in (("units", "benign_mean"), ("random_units", "random_mean")):
        if len(gating[units]) != len(gating[values]):
            raise ValueError(f"{path}: {units} has {len(gating[units])} entries, {values} {len(gating[values])}")
    return gating


def conditions_from_gating(gating: Mapping[str, Any]) -> list[Condition]:
    """The four conditions, in :data:`harmmed.constants.GENERATION_CONDITIONS` order."""
    layer = int(gating["layer"])
    units = tuple(int(u) for u in gating["units"])
    random_units = tuple(int(u) for u in gating["random_units"])
    return [
        NO_INTERVENTION,
        Condition("gate_mean", layer, units, tuple(float(v) for v in gating["benign_mean"])),
        Condition("gate_zero", layer, units, (0.0,) * len(units)),
        Condition("random_mean", layer, random_units, tuple(float(v) for v in gating["random_mean"])),
    ]


def check_conditions(conditions: Sequence[Condition], n_layers: int, d_mlp: int) -> None:
    """Fail before generating if a layer or unit does not exist in this model."""
    for c in conditions:
        if not c.units:
            continue
        if not 0 <= int(c.layer) < n_layers:
            raise ValueError(f"condition {c.name}: layer {c.layer} outside 0..{n_layers - 1}")
        bad = [u for u in c.units if not 0 <= u < d_mlp]
        if bad:
            raise ValueError(f"condition {c.name}: units {bad} outside 0..{d_mlp - 1}")


@contextmanager
def row_interventions(engine: MediationEngine, conditions: Sequence[Condition]) -> Iterator[None]:
    """Batch row r runs under ``conditions[r]``: its units are held at their values at every
    position of every forward pass; rows without units run free."""
    import torch

    from ..models.hooks import HookSet

    by_layer: dict[int, list[tuple[int, Condition]]] = {}
    for row, condition in enumerate(conditions):
        if condition.units:
            by_layer.setdefault(int(condition.layer), []).append((row, condition))

    def holder(items: list[tuple[int, Condition]]):
        def fn(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            for row, condition in items:
                x[row, :, list(condition.units)] = torch.tensor(condition.values, dtype=x.dtype, device=x.device)
            return x

        return fn

    with HookSet() as hooks:
        for layer, items in sorted(by_layer.items()):
            hooks.attach(*engine.sites.hook_point("neuron", layer), holder(items))
        yield


def generate_conditions(engine: MediationEngine, tokenizer: Any, prompt_ids: Sequence[int], max_new_tokens: int,
                        conditions: Sequence[Condition]) -> list[tuple[list[int], str]]:
    """Greedy continuations of one prompt under every condition, in one batched decoding."""
    return generate_batch(engine, tokenizer, [prompt_ids], max_new_tokens, conditions)[0]


def generate_batch(engine: MediationEngine, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   conditions: Sequence[Condition]) -> list[list[tuple[list[int], str]]]:
    """Greedy continuations of equal-length prompts under every condition, one batch row per
    (prompt, condition): result[i][j] is prompt i under condition j."""
    rows = [(prompt, condition) for prompt in prompts for condition in conditions]
    with row_interventions(engine, [condition for _, condition in rows]):
        outs = greedy_decode(engine.model, [prompt for prompt, _ in rows], max_new_tokens,
                             stop_ids(engine.model, tokenizer))
    texts = [(ids, tokenizer.decode(ids, skip_special_tokens=True)) for ids in outs]
    return [texts[i * len(conditions) : (i + 1) * len(conditions)] for i in range(len(prompts))]


def generate(engine: MediationEngine, tokenizer: Any, prompt_ids: Sequence[int], max_new_tokens: int,
             condition: Condition = NO_INTERVENTION) -> tuple[list[int], str]:
    """Greedy continuation of one prompt under one condition: (new token ids, decoded text)."""
    return generate_conditions(engine, tokenizer, prompt_ids, max_new_tokens, [condition])[0]


def request_text(tokenizer: Any, prompt_ids: Sequence[int], post_positions: Sequence[int]) -> str:
    """The user's request recovered from templated ids (a model judge needs the bare request).

    The ids before the first post-instruction token are the template prefix plus the request;
    the prefix is found by rendering the template around a sentinel. If decoding does not
    reproduce the prefix, the special-token-free decode is the fallback.
    """
    from ..datasets.prompts import chat_text

    head = list(prompt_ids)[: post_positions[0]] if post_positions else list(prompt_ids)
    text = tokenizer.decode(head, skip_special_tokens=False).strip()
    prefix = chat_text(tokenizer, _SENTINEL).split(_SENTINEL)[0].strip()
    if text.startswith(prefix):
        return text[len(prefix):].strip()
    return tokenizer.decode(head, skip_special_tokens=True).strip()


def generate_records(engine: MediationEngine, tokenizer: Any, pairs: Sequence[EncodedPair],
                     conditions: Sequence[Condition], max_new_tokens: int) -> list[dict[str, Any]]:
    """One unjudged record per (pair, prompt kind, condition), in the stable output order."""
    from tqdm import tqdm

    jobs = [(pair, kind, pair.harmful_ids if kind == "harmful" else pair.benign_ids)
            for pair in sorted(pairs, key=lambda p: p.pair_id) for kind in PROMPT_KINDS]
    by_length: dict[int, list[int]] = {}
    for index, (_, _, prompt_ids) in enumerate(jobs):
        by_length.setdefault(len(prompt_ids), []).append(index)
    per_batch = max(1, engine.max_batch_size // max(1, len(conditions)))
    outputs: dict[int, list[tuple[list[int], str]]] = {}
    with tqdm(total=len(jobs) * len(conditions), desc="generate", unit="gen", disable=False, mininterval=10) as bar:
        for _, indices in sorted(by_length.items()):
            for start in range(0, len(indices), per_batch):
                chunk = indices[start : start + per_batch]
                results = generate_batch(engine, tokenizer, [jobs[i][2] for i in chunk], max_new_tokens, conditions)
                outputs.update(zip(chunk, results))
                bar.update(len(chunk) * len(conditions))
    records: list[dict[str, Any]] = []
    for index, (pair, kind, prompt_ids) in enumerate(jobs):
        for condition, (output_ids, text) in zip(conditions, outputs[index]):
            records.append({"prompt_id": pair.pair_id, "prompt_kind": kind, "category": pair.category,
                            "condition": condition.name, "prompt_ids": list(prompt_ids),
                            "output_ids": output_ids, "text": text})
    return records


def judge_records(judge: Judge, records: list[dict[str, Any]], prompts: Sequence[str]) -> list[dict[str, Any]]:
    """Records with ``judge`` and ``verdict`` filled in (``prompts[i]`` is record i's request)."""
    from tqdm import tqdm

    verdicts: list[str] = []
    with tqdm(total=len(records), desc=f"judge ({judge.name})", unit="response", disable=False,
              mininterval=10) as bar:
        for start in range(0, len(records), JUDGE_CHUNK):
            chunk = records[start : start + JUDGE_CHUNK]
            verdicts += judge.judge(list(prompts[start : start + JUDGE_CHUNK]), [r["text"] for r in chunk])
            bar.update(len(chunk))
    return [{**r, "judge": judge.name, "verdict": v} for r, v in zip(records, verdicts)]


def generation_rates(records: Sequence[Mapping[str, Any]], level: float = 0.95) -> pd.DataFrame:
    """Compliance rate with a Wilson CI per (condition, prompt kind, judge), canonical order.

    On harmful prompts this is the harmful-response rate; on benign prompts the compliance rate.
    """
    frame = pd.DataFrame(list(records), columns=list(RECORD_FIELDS))
    rows = []
    for (judge, condition, kind), group in frame.groupby(["judge", "condition", "prompt_kind"], sort=False):
        n, k = len(group), int((group["verdict"] == COMPLIANCE).sum())
        low, high = wilson_interval(k, n, level)
        rows.append({"condition": condition, "prompt_kind": kind, "judge": judge, "n": n, "n_compliance": k,
                     "rate": k / n, "ci_low": low, "ci_high": high})
    rates = pd.DataFrame(rows, columns=list(RATE_COLUMNS))
    return canonical_rate_order(rates)


# ---------------------------------------------------------------- rates
def write_records(records: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """JSON lines with the fields in :data:`RECORD_FIELDS` order."""
    lines = [json.dumps({f: r[f] for f in RECORD_FIELDS}, ensure_ascii=False) + "\n" for r in records]
    Path(path).write_text("".join(lines), encoding="utf-8")
