"""The fine-tuning set is disjoint from the analysed minimal pairs, and reproducible."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

PROMPTS = Path(__file__).resolve().parents[1] / "data" / "prompts"


def _read(name: str) -> list[dict[str, str]]:
    with (PROMPTS / name).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _spans(row: dict[str, str]) -> tuple[str, str]:
    """The words where a minimal pair's prompts differ: its harmful and benign request objects."""
    harmful, benign = row["harmful"].split(), row["benign"].split()
    start = 0
    while harmful[start] == benign[start]:
        start += 1
    end = 0
    while harmful[-1 - end] == benign[-1 - end]:
        end += 1
    return " ".join(harmful[start:len(harmful) - end]), " ".join(benign[start:len(benign) - end])


def _contains(text: str, phrase: str) -> bool:
    phrase = phrase.strip(".?!, ").lower()
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text.lower()) is not None


def test_counts_and_categories_match_the_minimal_pairs() -> None:
    train, pairs = _read("safety_train.csv"), _read("minimal_pairs.csv")
    kinds = [row["kind"] for row in train]
    assert kinds.count("harmful") >= 200 and kinds.count("benign") >= 200
    assert {row["category"] for row in train} == {row["category"] for row in pairs}
    assert all(row["request"] and row["response"] for row in train)
    assert len({row["example_id"] for row in train}) == len(train)


def test_no_shared_request_objects() -> None:
    train, pairs = _read("safety_train.csv"), _read("minimal_pairs.csv")
    prompts = [text for row in pairs for text in (row["harmful"], row["benign"])]
    objects = sorted({row["object"] for row in train})
    shared = [(obj, p) for obj in objects for p in prompts if _contains(p, obj)]
    assert not shared, f"training objects inside minimal-pair prompts: {shared[:5]}"
    # and the other way round: no multi-word minimal-pair object inside a training request
    spans = {span for row in pairs for span in _spans(row) if len(span.split()) >= 2}
    inside = [(span, row["request"]) for span in sorted(spans) for row in train if _contains(row["request"], span)]
    assert not inside, f"minimal-pair objects inside training requests: {inside[:5]}"


def test_no_shared_templates() -> None:
    train, pairs = _read("safety_train.csv"), _read("minimal_pairs.csv")
    openings = {" ".join(p.lower().split()[:3]) for row in pairs for p in (row["harmful"], row["benign"])}
    clash = sorted({row["request"] for row in train if " ".join(row["request"].lower().split()[:3]) in openings})
    assert not clash, f"training requests open like a minimal pair: {clash[:5]}"
    requests = {row["request"] for row in train}
    assert not requests & {p for row in pairs for p in (row["harmful"], row["benign"])}


def test_generator_reproduces_the_file(tmp_path: Path) -> None:
    script = PROMPTS / "make_safety_train.py"
    copy = tmp_path / script.name
    copy.write_text(script.read_text(encoding="utf-8"), encoding="utf-8")
    subprocess.run([sys.executable, str(copy)], check=True)
    assert (tmp_path / "safety_train.csv").read_bytes() == (PROMPTS / "safety_train.csv").read_bytes()
