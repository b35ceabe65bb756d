"""The fine-tunes' training data: our safety CSV (harmful requests with refusals, benign ones
with answer starts), checked row by row, a seeded balanced subset, and its token ids under the
model's chat template. Torch-free: the rows are read and checked before a model is loaded.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets.prompts import encode_prompt

TRAIN_COLUMNS = ("example_id", "category", "kind", "request", "response")
TRAIN_KINDS = ("harmful", "benign")


@dataclass(frozen=True)
class Example:
    example_id: str
    kind: str
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]


def read_training_rows(path: str | Path) -> list[dict[str, str]]:
    """The training CSV; a defect is reported with its file, row and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training data file not found")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in TRAIN_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {', '.join(missing)}")
        rows = []
        for number, row in enumerate(reader, start=2):
            for column in TRAIN_COLUMNS:
                if not (row.get(column) or "").strip():
                    raise ValueError(f"{path}, row {number}, column {column!r}: empty value")
            if row["kind"] not in TRAIN_KINDS:
                raise ValueError(f"{path}, row {number}, column 'kind': must be one of {TRAIN_KINDS}, got {row['kind']!r}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no training examples")
    return rows


def balanced_subset(rows: Sequence[dict[str, str]], max_examples: int | None, seed: int) -> list[dict[str, str]]:
    """At most ``max_examples`` rows, half of each kind, drawn by ``seed`` (file order kept):
    training cost on a CPU is linear in the examples, and a plant needs only a few dozen."""
    if max_examples is None or max_examples >= len(rows):
        return list(rows)
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for k, kind in enumerate(TRAIN_KINDS):
        index = [i for i, row in enumerate(rows) if row["kind"] == kind]
        share = max_examples // 2 + (max_examples % 2 if k == 0 else 0)
        keep.update(int(i) for i in rng.permutation(index)[:share])
    return [row for i, row in enumerate(rows) if i in keep]


def encode_examples(tokenizer, rows: Sequence[dict[str, str]], response_tokens: int | None = None) -> list[Example]:
    """Templated prompt ids and response ids, tokenized the way targets are (no special tokens),
    each response cut to its first ``response_tokens`` (None: whole)."""
    out = []
    for row in rows:
        prompt, _ = encode_prompt(tokenizer, row["request"])
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"][:response_tokens]
        out.append(Example(row["example_id"], row["kind"], tuple(prompt), tuple(response)))
    return out
