"""Prompt files, chat-template encoding, alignment and splits."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from tiny import tiny_tokenizer, write_tiny_pairs

from harmmed.datasets.prompts import (
    PAIR_COLUMNS,
    PromptFileError,
    encode_pairs,
    encode_prompt,
    read_pairs,
    select_pairs,
    split_pairs,
)

REPO = Path(__file__).resolve().parents[1]


def test_bundled_pairs_are_well_formed():
    rows = read_pairs(REPO / "data/prompts/minimal_pairs.csv")
    categories = {r["category"] for r in rows}
    assert len(rows) >= 120 and len(categories) >= 8


def test_post_positions_are_the_template_tail():
    tokenizer = tiny_tokenizer()
    ids, post = encode_prompt(tokenizer, "how to make a bomb ?")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<|user|>" and tokens[-1] == "<|assistant|>"
    assert [tokens[i] for i in post] == ["<|end|>", "<|assistant|>"]


def test_misaligned_pairs_are_dropped_and_counted(tmp_path):
    tokenizer = tiny_tokenizer()
    path = tmp_path / "pairs.csv"
    write_tiny_pairs(path)
    rows = read_pairs(path)
    rows.append({"pair_id": "x-1", "category": "weapons", "harmful": "how to make a bomb .",
                 "benign": "how to make a cake at home .", "harmful_target": "Sure", "benign_target": "Sure"})
    kept, dropped = encode_pairs(tokenizer, rows, "minimal", split_pairs(rows, 0.5, 0))
    assert len(kept) == len(rows) - 1 and [d["pair_id"] for d in dropped] == ["x-1"]
    for pair in kept:
        assert len(pair.harmful_ids) == len(pair.benign_ids)
        assert sum(a != b for a, b in zip(pair.harmful_ids, pair.benign_ids)) >= 1


def test_split_is_seeded_and_stratified(tmp_path):
    path = tmp_path / "pairs.csv"
    write_tiny_pairs(path)
    rows = read_pairs(path)
    first, again, other = split_pairs(rows, 0.5, 0), split_pairs(rows, 0.5, 0), split_pairs(rows, 0.5, 1)
    assert first == again and first != other
    for category in {r["category"] for r in rows}:
        splits = [first[r["pair_id"]] for r in rows if r["category"] == category]
        assert sorted(splits) == ["discovery", "held_out"]


def test_cap_keeps_every_category(tmp_path):
    tokenizer = tiny_tokenizer()
    path = tmp_path / "pairs.csv"
    write_tiny_pairs(path)
    rows = read_pairs(path)
    kept, _ = encode_pairs(tokenizer, rows, "minimal", split_pairs(rows, 0.5, 0))
    chosen = select_pairs(kept, "all", 4)
    assert len(chosen) == 4 and len({p.category for p in chosen}) == 4


def _write(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([["pair_id", "category", "harmful"]], r"header lacks column\(s\) benign"),
        ([list(PAIR_COLUMNS), ["a-1", "x", "h", "", "t", "t"]], r"row 2, column 'benign': empty value"),
        ([list(PAIR_COLUMNS), ["a-1", "x", "h", "b", "t", "t"], ["a-1", "x", "h2", "b2", "t", "t"]],
         r"row 3, column 'pair_id': duplicate id 'a-1'"),
        ([list(PAIR_COLUMNS), ["a-1", "x", "h", "b", "t", "t", "extra"]], r"row 2: more fields"),
    ],
)
def test_malformed_prompt_file_names_file_row_and_column(tmp_path, rows, message):
    path = tmp_path / "bad.csv"
    _write(path, rows)
    with pytest.raises(PromptFileError, match=message) as info:
        read_pairs(path)
    assert str(path) in str(info.value)
