"""Public prompt sources for the unpaired mode, pinned and verified.

Every entry of :data:`SOURCES` points at an immutable URL: a GitHub raw URL that
names a full commit hash, or a Hugging Face ``resolve/<commit>`` URL. The commit
hashes are pinned here, in the registry; the sha256 of each file is not known in
advance (mirrors re-save files) and is recorded in the lock file on the first
verified download, then enforced on every later download or reuse.

Parsers accept the canonical upstream formats. Some also accept the reference
copies kept in ``../shared/datasets`` (same data, different columns or a
pre-processed layout); the format is detected from the columns or keys.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..io.fetch import ChecksumMismatchError, download, normalize_sha256, sha256_file

Role = Literal["harmful", "benign"]
Prompt = dict[str, Any]
# A parser turns a raw file into prompt rows {"prompt", "category", "target"}; ids are added later.
Parser = Callable[[Path], list[Prompt]]

DEFAULT_TARGET = "Sure, here is"
# How a pair's harmful target was made: the dataset's own column, or built from the behaviour.
TARGET_FROM_DATASET = "dataset"
TARGET_BUILT = "built: affirmative_target(behaviour)"
_REQUEST_VERB = re.compile(
    r"^(?:please\s+)?(?:write|give|generate|create|describe|explain|list|provide|develop|compose|draft|outline|"
    r"produce|devise|design|suggest|brainstorm|offer|share|detail|tell me|show me|teach me|help me)\b\s*",
    re.IGNORECASE,
)


def affirmative_target(behaviour: str) -> str:
    """An AdvBench-style affirmative start for a behaviour that has no target (HarmBench):
    "Write a persuasive article about X" -> "Sure, here is a persuasive article about X";
    another imperative ("Convince people to X") -> "Sure, here is how to convince people to X";
    a question -> "Sure, here is the answer". The first letter is lower-cased unless the
    first word looks like a name or acronym."""
    text = " ".join(behaviour.split())
    if text.endswith("?"):
        return "Sure, here is the answer"
    text = text.rstrip(".!: ")
    match = _REQUEST_VERB.match(text)
    rest = text[match.end():] if match and text[match.end():] else text
    first = rest.split(" ", 1)[0]
    if first[1:] == first[1:].lower() and first != "I":
        rest = rest[0].lower() + rest[1:]
    if not match:
        rest = rest if rest.startswith("how ") else f"how to {rest}"
    return f"Sure, here is {rest}"


def _read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """Read a CSV as dicts and fail early, naming the file, if a needed column is missing."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        missing = [name for name in required if name not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {sorted(columns)}")
        return list(reader)


def _row(prompt: str, category: str | None = None, target: str | None = None) -> Prompt:
    """One parsed prompt; blank category/target become None so downstream can test for absence."""
    return {
        "prompt": prompt.strip(),
        "category": (category or "").strip() or None,
        "target": (target or "").strip() or None,
    }


def parse_advbench(path: Path) -> list[Prompt]:
    """AdvBench ``harmful_behaviors.csv``: ``goal,target``."""
    return [_row(r["goal"], None, r["target"]) for r in _read_csv(path, ["goal", "target"])]


def parse_harmbench(path: Path) -> list[Prompt]:
    """HarmBench text behaviors, standard ones only.

    Contextual behaviors need their ContextString and copyright ones a hash-based
    judge, so neither is a self-contained prompt.
    """
    rows = _read_csv(path, ["Behavior", "FunctionalCategory", "SemanticCategory"])
    return [
        _row(r["Behavior"], r["SemanticCategory"])
        for r in rows
        if r["FunctionalCategory"].strip() == "standard"
    ]


def parse_jbb(path: Path) -> list[Prompt]:
    """JBB-Behaviors (harmful or benign): ``Index,Goal,Target,Behavior,Category,Source``.

    The reference copy names the index column "" instead of "Index"; only Goal,
    Target and Category are read, so both parse the same.
    """
    rows = _read_csv(path, ["Goal", "Target", "Category"])
    return [_row(r["Goal"], r["Category"], r["Target"]) for r in rows]


def _parse_xstest(path: Path, label: str) -> list[Prompt]:
    rows = _read_csv(path, ["prompt", "type", "label"])
    return [_row(r["prompt"], r["type"]) for r in rows if r["label"].strip() == label]


def parse_xstest_safe(path: Path) -> list[Prompt]:
    """XSTest prompts labelled safe (they only look harmful); category is the XSTest type."""
    return _parse_xstest(path, "safe")


def parse_xstest_unsafe(path: Path) -> list[Prompt]:
    """XSTest contrast prompts labelled unsafe."""
    return _parse_xstest(path, "unsafe")


def parse_alpaca(path: Path) -> list[Prompt]:
    """Alpaca instructions that need no input.

    Canonical ``alpaca_data.json`` rows are ``{instruction, input, output}`` and only
    rows with an empty ``input`` are kept (the others are not standalone prompts).
    The processed reference copy, ``{instruction, category}``, is already filtered.
    """
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise ValueError(f"{path}: expected a non-empty JSON list of objects")
    keys = set(data[0])
    if {"instruction", "input"} <= keys:
        return [_row(r["instruction"]) for r in data if not str(r.get("input") or "").strip()]
    if "instruction" in keys:
        return [_row(r["instruction"], r.get("category")) for r in data]
    raise ValueError(f"{path}: unrecognised Alpaca format, keys {sorted(keys)}")


@dataclass(frozen=True)
class Source:
    """One public prompt source: where its file lives and how to read it."""

    name: str
    url: str
    filename: str  # name under raw_dir; sources cut from one file share it
    format: Literal["csv", "json"]
    parser: Parser
    role: Role
    license: str


_ADVBENCH_URL = (
    "https://raw.githubusercontent.com/llm-attacks/llm-attacks/"
    "098262edf85f807224e70ecd87b9d83716bf6b73/data/advbench/harmful_behaviors.csv"
)
_HARMBENCH_URL = (
    "https://raw.githubusercontent.com/centerforaisafety/HarmBench/"
    "c0423b952435fcc8467108d8f25962dbae5b7de2/data/behavior_datasets/harmbench_behaviors_text_test.csv"
)
_JBB_BASE = (
    "https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors/resolve/"
    "886acc352a31533ffbcf4ef22c744658688086fc/data/"
)
# paul-rottger/exaggerated-safety was renamed paul-rottger/xstest; the commit is the same.
_XSTEST_URL = (
    "https://raw.githubusercontent.com/paul-rottger/xstest/"
    "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d/xstest_prompts.csv"
)
_ALPACA_URL = (
    "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/"
    "761dc5bfbdeeffa89b8bff5d038781a4055f796a/alpaca_data.json"
)

SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("advbench", _ADVBENCH_URL, "advbench.csv", "csv", parse_advbench, "harmful", "MIT"),
        Source("harmbench", _HARMBENCH_URL, "harmbench_test.csv", "csv", parse_harmbench, "harmful", "MIT"),
        Source(
            "jbb_harmful", _JBB_BASE + "harmful-behaviors.csv", "jbb_harmful.csv", "csv",
            parse_jbb, "harmful", "MIT",
        ),
        Source(
            "jbb_benign", _JBB_BASE + "benign-behaviors.csv", "jbb_benign.csv", "csv",
            parse_jbb, "benign", "MIT",
        ),
        Source(
            "xstest_safe", _XSTEST_URL, "xstest_prompts.csv", "csv",
            parse_xstest_safe, "benign", "CC-BY-4.0",
        ),
        Source(
            "xstest_unsafe", _XSTEST_URL, "xstest_prompts.csv", "csv",
            parse_xstest_unsafe, "harmful", "CC-BY-4.0",
        ),
        Source("alpaca", _ALPACA_URL, "alpaca_data.json", "json", parse_alpaca, "benign", "CC-BY-NC-4.0"),
    )
}


def get_source(name: str) -> Source:
    """Look a source up, listing the known names when it is not one of them."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(
            f"Unknown prompt source {name!r}; known sources: {', '.join(sorted(SOURCES))}"
        ) from None


def read_lock(lock_file: Path) -> dict[str, dict[str, str]]:
    """The lock file's entries, or none when it does not exist yet."""
    lock_file = Path(lock_file)
    if not lock_file.exists():
        return {}
    with open(lock_file, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{lock_file}: expected a JSON object of {{name: {{url, sha256}}}}")
    return data


def write_lock(lock_file: Path, entries: Mapping[str, Mapping[str, str]]) -> None:
    """Write the lock atomically with stable formatting, so reruns give no spurious diffs."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(entries, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{lock_file.name}.", suffix=".tmp", dir=lock_file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, lock_file)
    finally:
        Path(tmp).unlink(missing_ok=True)


def fetch_sources(
    names: Iterable[str],
    raw_dir: Path,
    lock_file: Path,
    url_overrides: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Make each named source's file present and verified in ``raw_dir``.

    A file already present is re-hashed against its lock entry rather than fetched
    again. A missing file is downloaded and checked against the lock entry; with no
    entry yet, its sha256 is recorded (trust on first verified download). A lock
    entry always wins over a changed URL: the bytes, not the address, are pinned.
    """
    names = list(names)
    sources = [get_source(name) for name in names]
    overrides = dict(url_overrides or {})
    unknown = sorted(set(overrides) - set(SOURCES))
    if unknown:
        raise ValueError(f"url_overrides name unknown source(s) {unknown}; known: {sorted(SOURCES)}")
    raw_dir = Path(raw_dir)
    lock = read_lock(lock_file)
    changed = False
    paths: dict[str, Path] = {}
    seen: dict[Path, str] = {}  # files hashed in this call; xstest_safe/unsafe share one
    for source in sources:
        url = overrides.get(source.name, source.url)
        path = raw_dir / source.filename
        entry = lock.get(source.name)
        pinned = normalize_sha256(entry.get("sha256", ""), f"{lock_file}: {source.name}.sha256") if entry else None
        if path in seen or (path.exists() and pinned is not None):
            actual = seen[path] if path in seen else sha256_file(path)
            if pinned is not None and actual != pinned:
                raise ChecksumMismatchError(
                    f"Checksum mismatch for {path} (source {source.name}, {url}): expected sha256 "
                    f"{pinned} from {lock_file}, got {actual}. Delete the file to download it again."
                )
        else:
            # Missing, or present but never verified: (re)download, so what we lock is what the URL serves.
            actual = download(url, path, expected_sha256=pinned)
        seen[path] = actual
        if entry is None:
            lock[source.name] = {"url": url, "sha256": actual}
            changed = True
        paths[source.name] = path
    if changed:
        write_lock(lock_file, lock)
    return paths


def load_prompts(name: str, path: Path) -> list[Prompt]:
    """Parse a source file into rows {id, prompt, category, target}.

    Ids are ``<name>-<index>`` over the parsed (filtered) rows, zero-padded to four
    digits, so they are stable for a pinned file.
    """
    source = get_source(name)
    rows = source.parser(Path(path))
    if not rows:
        raise ValueError(f"{path}: no prompts parsed for source {name!r}")
    return [{"id": f"{name}-{i:04d}", **row} for i, row in enumerate(rows)]


def build_unpaired_pairs(
    harmful: list[Prompt],
    benign: list[Prompt],
    n_pairs: int,
    seed: int,
) -> list[Prompt]:
    """Draw ``n_pairs`` harmful and benign prompts without replacement and pair them up.

    Unpaired mode has no minimal contrast, so pairing is a seeded random draw; the
    same inputs and seed always give the same pairs. The category is the harmful
    prompt's (or its source name when the source has none). A harmful prompt without a
    target gets :func:`affirmative_target`, and ``harmful_target_source`` says which.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be positive, got {n_pairs}")
    if n_pairs > len(harmful) or n_pairs > len(benign):
        raise ValueError(
            f"n_pairs={n_pairs} exceeds the available prompts "
            f"({len(harmful)} harmful, {len(benign)} benign)"
        )
    rng = random.Random(seed)
    drawn_harmful = rng.sample(harmful, n_pairs)
    drawn_benign = rng.sample(benign, n_pairs)
    pairs = []
    for i, (h, b) in enumerate(zip(drawn_harmful, drawn_benign, strict=True)):
        pairs.append(
            {
                "pair_id": f"unpaired-{i:04d}",
                "category": h.get("category") or str(h["id"]).rsplit("-", 1)[0],
                "harmful": h["prompt"],
                "benign": b["prompt"],
                "harmful_target": h.get("target") or affirmative_target(h["prompt"]),
                "benign_target": DEFAULT_TARGET,
                "harmful_target_source": TARGET_FROM_DATASET if h.get("target") else TARGET_BUILT,
            }
        )
    return pairs
