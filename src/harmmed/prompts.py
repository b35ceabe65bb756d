"""Prompt pairs: reading them, encoding them under a model's chat template, splitting them.

The result of this module is the exact token ids the model sees; ``inputs.jsonl`` records them so
that a reviewer can recompute any row without our tokenisation code.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PAIR_COLUMNS = ("pair_id", "category", "harmful", "benign", "harmful_target", "benign_target")
DROPPED_COLUMNS = ("pair_id", "harmful_tokens", "benign_tokens", "reason")


class PromptFileError(ValueError):
    pass


@dataclass
class EncodedPair:
    pair_id: str
    split: str
    category: str
    harmful_ids: list[int]
    benign_ids: list[int]
    target_ids: list[int]
    post_positions: list[int]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(", ", ": "))


def read_pairs(path: str | Path) -> list[dict[str, str]]:
    """Read a pairs CSV; any defect is reported with its file, row and column."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: prompt pairs file not found")
    with io.StringIO(_decoded(path), newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in PAIR_COLUMNS if c not in header]
        if missing:
            raise PromptFileError(f"{path}: header lacks column(s) {', '.join(missing)}; expected {', '.join(PAIR_COLUMNS)}")
        rows: list[dict[str, str]] = []
        seen: dict[str, int] = {}
        for row_number, row in enumerate(reader, start=2):  # row 1 is the header
            if None in row:
                raise PromptFileError(f"{path}, row {row_number}: more fields than the header's {len(header)} columns")
            for column in PAIR_COLUMNS:
                if row[column] is None or not row[column].strip():
                    raise PromptFileError(f"{path}, row {row_number}, column {column!r}: empty value")
            pair_id = row["pair_id"]
            if pair_id in seen:
                raise PromptFileError(
                    f"{path}, row {row_number}, column 'pair_id': duplicate id {pair_id!r} (first on row {seen[pair_id]})"
                )
            seen[pair_id] = row_number
            if row["harmful"] == row["benign"]:
                raise PromptFileError(f"{path}, row {row_number}, column 'benign': identical to the harmful prompt")
            rows.append({c: row[c] for c in PAIR_COLUMNS})
    if not rows:
        raise PromptFileError(f"{path}: no prompt pairs")
    return rows


def _decoded(path: Path) -> str:
    """The file as text: UTF-8, a leading byte-order mark dropped; a byte that is not UTF-8 is
    reported with its row (line) and offset rather than as a bare UnicodeDecodeError."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PromptFileError(
            f"{path}, row {line}: byte 0x{raw[err.start]:02x} at offset {err.start} is not UTF-8 "
            f"({err.reason}); save the file as UTF-8") from None


def chat_text(tokenizer, request: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": request}], add_generation_prompt=True, tokenize=False
    )


def encode_prompt(tokenizer, request: str) -> tuple[list[int], list[int]]:
    """Token ids of the templated prompt and the indices of its post-instruction tokens.

    Post-instruction tokens are those that start at or after the end of the user's text in the
    rendered template (the end-of-turn marker and the assistant header).
    """
    text = chat_text(tokenizer, request)
    end = text.rfind(request) + len(request)
    if end < len(request):
        raise ValueError(f"chat template does not contain the request verbatim: {request!r}")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    post = [i for i, (start, _stop) in enumerate(encoded["offset_mapping"]) if start >= end]
    if not post:
        raise ValueError(f"no post-instruction tokens after the request {request!r}")
    return ids, post


def encode_pairs(
    tokenizer, rows: list[dict[str, str]], mode: str, split_of: dict[str, str]
) -> tuple[list[EncodedPair], list[dict[str, str]]]:
    """Encode pairs. Pairs whose two prompts encode to the same ids (they differ only in
    whitespace the tokenizer drops) and minimal pairs that are not token-aligned are returned
    as dropped, each with its reason."""
    kept: list[EncodedPair] = []
    dropped: list[dict[str, str]] = []
    for row in rows:
        harmful_ids, post = encode_prompt(tokenizer, row["harmful"])
        benign_ids, benign_post = encode_prompt(tokenizer, row["benign"])
        reason = None
        if harmful_ids == benign_ids:
            reason = "identical token ids"
        elif mode == "minimal" and (len(harmful_ids) != len(benign_ids) or post != benign_post):
            reason = "not token-aligned"
        elif mode == "unpaired" and len(post) != len(benign_post):
            reason = "post-instruction lengths differ"
        if reason is not None:
            dropped.append({"pair_id": row["pair_id"], "harmful_tokens": str(len(harmful_ids)),
                            "benign_tokens": str(len(benign_ids)), "reason": reason})
            continue
        target_ids = list(tokenizer(row["harmful_target"], add_special_tokens=False)["input_ids"])
        kept.append(
            EncodedPair(row["pair_id"], split_of[row["pair_id"]], row["category"], harmful_ids, benign_ids,
                        target_ids, post)
        )
    return kept, dropped


def split_pairs(rows: list[dict[str, str]], discovery_fraction: float, seed: int) -> dict[str, str]:
    """Seeded split, stratified by category so both splits cover every harm category."""
    by_category: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row["pair_id"])
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    for category in sorted(by_category):
        ids = sorted(by_category[category])
        order = rng.permutation(len(ids))
        n_discovery = int(round(discovery_fraction * len(ids)))
        for rank, index in enumerate(order):
            split_of[ids[index]] = "discovery" if rank < n_discovery else "held_out"
    return split_of


def read_inputs(path: str | Path) -> list[EncodedPair]:
    with Path(path).open(encoding="utf-8") as handle:
        return [EncodedPair(**json.loads(line)) for line in handle if line.strip()]


def write_inputs(pairs: list[EncodedPair], path: str | Path) -> None:
    Path(path).write_text("".join(p.to_json() + "\n" for p in pairs), encoding="utf-8")


def select_pairs(pairs: list[EncodedPair], split: str, max_pairs: int | None) -> list[EncodedPair]:
    """The pairs of a split; a cap takes categories in turn so every category stays represented."""
    chosen = [p for p in pairs if split == "all" or p.split == split]
    if max_pairs is None or len(chosen) <= max_pairs:
        return chosen
    queues: dict[str, list[EncodedPair]] = defaultdict(list)
    for pair in chosen:
        queues[pair.category].append(pair)
    interleaved: list[EncodedPair] = []
    while len(interleaved) < max_pairs:
        for category in sorted(queues):
            if queues[category] and len(interleaved) < max_pairs:
                interleaved.append(queues[category].pop(0))
    return interleaved
