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
    # noise mode only (absent from the file otherwise): the harmful positions whose embeddings
    # are corrupted, the seed of this pair's draws, the sd in units of the embedding matrix's
    # std, and the number of draws averaged
    noise_span: list[int] | None = None
    noise_seed: int | None = None
    noise_scale: float | None = None
    noise_samples: int | None = None

    def to_json(self) -> str:
        record = {k: v for k, v in asdict(self).items() if not (k.startswith("noise_") and v is None)}
        return json.dumps(record, separators=(", ", ": "))


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
            raise PromptFileError(f"{path}: header lacks column(s) {', '.join(missing)}; expected {', '.join(PAIR_COLUMNS)}, "
                                  f"found {', '.join(repr(c) for c in header)}")
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise PromptFileError(f"{path}: header names column(s) {', '.join(repeated)} more than once; keep one")
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
    ids, _request, post = _encode_with_roles(tokenizer, request)
    return ids, post


def request_positions(tokenizer, request: str) -> list[int]:
    """Positions of the tokens that carry the user's request (neither template nor
    post-instruction): the span noise mode corrupts when there is no minimal counterpart."""
    return _encode_with_roles(tokenizer, request)[1]


def _encode_with_roles(tokenizer, request: str) -> tuple[list[int], list[int], list[int]]:
    text = chat_text(tokenizer, request)
    begin = text.rfind(request)
    end = begin + len(request)
    if begin < 0:
        raise ValueError(f"chat template does not contain the request verbatim: {request!r}")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    offsets = encoded["offset_mapping"]
    post = [i for i, (start, _stop) in enumerate(offsets) if start >= end]
    inside = [i for i, (start, stop) in enumerate(offsets) if stop > begin and start < end]
    if not post:
        raise ValueError(f"no post-instruction tokens after the request {request!r}")
    return ids, inside, post


def noise_span(harmful_ids: list[int], benign_ids: list[int]) -> list[int]:
    """First to last differing position of a token-aligned minimal pair, inclusive."""
    diff = [i for i, (h, b) in enumerate(zip(harmful_ids, benign_ids)) if h != b]
    return list(range(diff[0], diff[-1] + 1))


def encode_pairs(
    tokenizer, rows: list[dict[str, str]], mode: str, split_of: dict[str, str], noise: dict | None = None,
    request_span: bool = False,
) -> tuple[list[EncodedPair], list[dict[str, str]]]:
    """Encode pairs. Pairs whose two prompts encode to the same ids (they differ only in
    whitespace the tokenizer drops) and, where positions must align, pairs that are not
    token-aligned are returned as dropped, each with its reason.

    Noise mode (``noise``: scale, samples, seed) corrupts the differing span of token-aligned
    minimal pairs (non-aligned ones are dropped), or the whole request when ``request_span``
    (benchmark prompts, which have no minimal counterpart). Pair i's draws use seed + i.
    """
    kept: list[EncodedPair] = []
    dropped: list[dict[str, str]] = []
    aligned_only = mode == "minimal" or (mode == "noise" and not request_span)
    for index, row in enumerate(rows):
        try:
            harmful_ids, post = encode_prompt(tokenizer, row["harmful"])
            benign_ids, benign_post = encode_prompt(tokenizer, row["benign"])
        except ValueError as err:  # the template rewrote the request, or left no assistant header
            raise ValueError(f"pair {row['pair_id']}: {err}") from None
        reason = None
        if harmful_ids == benign_ids:
            reason = "identical token ids"
        elif aligned_only and (len(harmful_ids) != len(benign_ids) or post != benign_post):
            reason = "not token-aligned"
        if reason is not None:
            dropped.append({"pair_id": row["pair_id"], "harmful_tokens": str(len(harmful_ids)),
                            "benign_tokens": str(len(benign_ids)), "reason": reason})
            continue
        target_ids = list(tokenizer(row["harmful_target"], add_special_tokens=False)["input_ids"])
        pair = EncodedPair(row["pair_id"], split_of[row["pair_id"]], row["category"], harmful_ids, benign_ids,
                           target_ids, post)
        if mode == "noise":
            pair.noise_span = (request_positions(tokenizer, row["harmful"]) if request_span
                               else noise_span(harmful_ids, benign_ids))
            pair.noise_seed = int(noise["seed"]) + index
            pair.noise_scale = float(noise["scale"])
            pair.noise_samples = int(noise["samples"])
        kept.append(pair)
    return kept, dropped


def check_categories(rows: list[dict[str, str]], declared: list[str] | None, path: str | Path,
                     key: str = "prompts.categories") -> None:
    """Every row's category must be one of ``declared`` (None: no list declared): a misspelt
    category would otherwise become a stratum of its own and change the split."""
    if declared is None:
        return
    for row_number, row in enumerate(rows, start=2):
        if row["category"] not in declared:
            raise PromptFileError(f"{path}, row {row_number}, column 'category': {row['category']!r} is not a declared "
                                  f"category ({key}: {', '.join(declared)}); correct the row, or declare it in "
                                  f"{key} (null declares none)")


def control_tokens(tokenizer) -> list[str]:
    """The tokenizer's special tokens (the chat template's control tokens among them)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = set(tokenizer.all_special_tokens) | {str(t.content) for t in added.values() if getattr(t, "special", False)}
    return sorted(t for t in special if t)


def check_control_tokens(rows: list[dict[str, str]], tokenizer, path: str | Path) -> None:
    """A prompt or target must not contain the chat template's control tokens: they would be
    encoded as real control tokens and change the conversation's structure."""
    tokens = control_tokens(tokenizer)
    for row_number, row in enumerate(rows, start=2):
        for column in ("harmful", "benign", "harmful_target", "benign_target"):
            found = [t for t in tokens if t in row[column]]
            if found:
                raise PromptFileError(f"{path}, row {row_number}, column {column!r}: contains the tokenizer's control "
                                      f"token(s) {', '.join(found)}; remove them from the text")


def check_lengths(pairs: list[EncodedPair], rows: list[dict[str, str]], limit: int | None, path: str | Path,
                  model: str) -> None:
    """Prompt plus target must fit the model's context (its position embeddings), or the model
    would score positions it was never trained on."""
    if not limit:
        return
    row_of = {row["pair_id"]: n for n, row in enumerate(rows, start=2)}
    for pair in pairs:
        length = max(len(pair.harmful_ids), len(pair.benign_ids)) + len(pair.target_ids)
        if length > limit:
            raise PromptFileError(f"{path}, row {row_of[pair.pair_id]} ({pair.pair_id}): {length} tokens with the chat "
                                  f"template and the target, but {model} takes at most {limit}; shorten the row or "
                                  "remove it")


def split_pairs(rows: list[dict[str, str]], discovery_fraction: float, seed: int) -> dict[str, str]:
    """Seeded split, stratified by category so both splits cover every harm category.

    A category with a single pair cannot be split, so all such pairs form one pooled stratum
    (JBB gives every behaviour its own category: without pooling, discovery would be empty).
    """
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row["category"]] += 1
    by_category: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        stratum = row["category"] if counts[row["category"]] > 1 else "\0singletons"
        by_category[stratum].append(row["pair_id"])
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


def select_pairs(pairs: list[EncodedPair], split: str, max_pairs: int | None, key: str = "split"
                 ) -> list[EncodedPair]:
    """The pairs of a split; a cap takes categories in turn so every category stays represented.
    An empty split is an error naming the config ``key`` that asked for it."""
    chosen = [p for p in pairs if split == "all" or p.split == split]
    if not chosen:
        counts = {name: sum(p.split == name for p in pairs) for name in ("discovery", "held_out")}
        raise ValueError(f"{key}: the {split!r} split has no pairs ({counts['discovery']} discovery, "
                         f"{counts['held_out']} held_out of {len(pairs)})")
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
