"""Public prompt sources for the unpaired mode, pinned and verified.

Every entry of :data:`SOURCES` points at an immutable URL: a GitHub raw URL that
names a full commit hash, or a Hugging Face ``resolve/<commit>`` URL. A file's bytes are
pinned by the registry (where the canonical digest is known) or by the user's lock file,
by sha256 or by the git blob id the pinned commit's tree lists; a set without a pin is
refused unless the user asks to pin what its URL serves now (``prompts.public.pin_new``),
and only such new pins are written to the lock file.

Parsers accept the canonical upstream formats. Some also accept the reference
copies kept in ``../shared/datasets`` (same data, different columns or a
pre-processed layout); the format is detected from the columns or keys.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import shutil
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..io.fetch import ChecksumMismatchError, download, normalize_sha256, sha256_file
from ..io.storage import atomic_path

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
    pin: Mapping[str, str] | None = None  # the canonical file's digest (sha256 or git blob id), where known


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

# Pins of canonical files known without downloading them: XSTest's file at the pinned commit (the
# reference copy is that file), and Alpaca's git blob id in the pinned commit's tree. AdvBench,
# HarmBench and JBB have none here: pin them in the lock file, or let pin_new record them.
_XSTEST_SHA256 = "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a"
_ALPACA_GIT_BLOB = "3779ddbc040543ab1834ef216c983d6fcc06cc9a"

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
            parse_xstest_safe, "benign", "CC-BY-4.0", {"sha256": _XSTEST_SHA256},
        ),
        Source(
            "xstest_unsafe", _XSTEST_URL, "xstest_prompts.csv", "csv",
            parse_xstest_unsafe, "harmful", "CC-BY-4.0", {"sha256": _XSTEST_SHA256},
        ),
        Source("alpaca", _ALPACA_URL, "alpaca_data.json", "json", parse_alpaca, "benign", "CC-BY-NC-4.0",
               {"git_blob": _ALPACA_GIT_BLOB}),
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


class UnpinnedSourceError(ValueError):
    """A public set has no digest in the lock file, and pinning new ones was not asked for."""


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def read_lock(lock_file: Path) -> dict[str, dict[str, str]]:
    """The lock file's entries (``{name: {url, sha256 | git_blob}}``), or none when it does not
    exist; a malformed file is one clear error naming it."""
    lock_file = Path(lock_file)
    if not lock_file.exists():
        return {}
    try:
        data = json.loads(lock_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{lock_file}: not a readable JSON lock file ({err}); restore it from git") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and ("sha256" in v or "git_blob" in v)
                                             for v in data.values()):
        raise ValueError(f"{lock_file}: expected a JSON object of {{name: {{url, sha256 or git_blob}}}}; "
                         "restore it from git")
    return data


def write_lock(lock_file: Path, entries: Mapping[str, Mapping[str, str]]) -> None:
    """Write the lock atomically with stable formatting, so reruns give no spurious diffs."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(entries, indent=2, sort_keys=True) + "\n"
    with atomic_path(lock_file) as tmp:
        tmp.write_text(text, encoding="utf-8")


def git_blob_id(path: Path) -> str:
    """The git blob id (sha1 of ``blob <size>\\0`` and the bytes) of a file: the digest a
    repository's tree lists for it, so a file served from a pinned commit can be checked
    without having downloaded it before."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_override_url(name: str, url: str) -> None:
    """A mirror must be https (http only on this machine's loopback, for a local mirror server);
    a file on disk goes through ``local_files``, never a ``file://`` URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "https" or (parsed.scheme == "http" and parsed.hostname in LOOPBACK_HOSTS):
        return
    raise ValueError(f"prompts.public.url_overrides.{name}: {url!r} is not an https:// URL; a file on this machine "
                     f"goes under prompts.public.local_files.{name}")


def _verify_pin(source: Source, path: Path, entry: Mapping[str, str] | None, lock_file: Path, where: str) -> str:
    """The file's sha256, after checking it against its lock entry (sha256, or a git blob id)."""
    actual = sha256_file(path)
    if entry is None:
        return actual
    if "sha256" in entry:
        pinned = normalize_sha256(entry["sha256"], f"{lock_file}: {source.name}.sha256")
        if actual != pinned:
            raise ChecksumMismatchError(f"Checksum mismatch for {source.name} ({where}): expected sha256 {pinned}, "
                                        f"got {actual}.")
    elif (blob := git_blob_id(path)) != entry["git_blob"]:
        raise ChecksumMismatchError(f"Checksum mismatch for {source.name} ({where}): expected git blob "
                                    f"{entry['git_blob']}, got {blob}.")
    return actual


def fetch_sources(
    names: Iterable[str],
    raw_dir: Path,
    lock_file: Path,
    url_overrides: dict[str, str] | None = None,
    local_files: dict[str, str] | None = None,
    pin_new: bool = False,
) -> dict[str, Path]:
    """Make each named source's file present and verified in ``raw_dir``.

    A file already present is re-hashed against its lock entry. A missing one is downloaded
    (or copied from ``local_files``) to a staging name, checked against its lock entry (a
    sha256, or the git blob id of the pinned commit's file), parsed, and only then moved into
    ``raw_dir`` and, when new, pinned: a failed set leaves nothing behind. A source with no
    lock entry is refused unless ``pin_new`` (trust on first use, asked for explicitly).
    """
    names = list(names)
    sources = [get_source(name) for name in names]
    overrides, local = dict(url_overrides or {}), dict(local_files or {})
    for key, given in (("url_overrides", overrides), ("local_files", local)):
        unknown = sorted(set(given) - set(SOURCES))
        if unknown:
            raise ValueError(f"prompts.public.{key}: unknown source(s) {unknown}; known: {sorted(SOURCES)}")
    for name, url in overrides.items():
        check_override_url(name, url)
    raw_dir = Path(raw_dir)
    lock = read_lock(lock_file)
    paths: dict[str, Path] = {}
    seen: dict[Path, str] = {}  # files verified in this call; xstest_safe/unsafe share one
    for source in sources:
        url = overrides.get(source.name, source.url)
        where = local.get(source.name, url)
        path = raw_dir / source.filename
        entry = lock.get(source.name) or source.pin  # the lock's own pin first (a mirror's bytes may differ)
        if entry is None and not pin_new:
            state = "has no digest for" if Path(lock_file).exists() else "does not exist, so nothing pins"
            raise UnpinnedSourceError(
                f"{lock_file} {state} {source.name} (nor does the registry). Pin it by adding its sha256 (or git "
                f"blob id) to the lock, or set prompts.public.pin_new: true to record what {where} serves now "
                "(trust on first use)")
        if path in seen and entry is not None and "sha256" in entry and entry["sha256"] != seen[path]:
            raise ChecksumMismatchError(f"{source.name}: {lock_file} pins {entry['sha256']} for {path}, which another "
                                        f"source's pin verified as {seen[path]}")
        if path in seen:
            actual = seen[path]
        elif path.exists() and entry is not None:
            actual = _verify_pin(source, path, entry, lock_file, f"{path}, kept from an earlier run; delete it to "
                                                                  "download it again")
        else:
            actual = _stage(source, path, url, local.get(source.name), entry, lock_file)
        seen[path] = actual
        if entry is None:  # pinned now (asked for), so a kept file never lacks its pin
            lock[source.name] = {"url": url, "sha256": actual}
            write_lock(lock_file, lock)
        paths[source.name] = path
    return paths


def _stage(source: Source, path: Path, url: str, local: str | None, entry: Mapping[str, str] | None,
           lock_file: Path) -> str:
    """Download (or copy) a source to a staging name beside ``path``, verify and parse it, then
    move it into place; on any failure nothing is left. Returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.staged")
    try:
        if local is not None:
            if not Path(local).is_file():
                raise FileNotFoundError(f"prompts.public.local_files.{source.name}: {local} is not a file")
            shutil.copyfile(local, staged)
        else:
            download(url, staged)
        actual = _verify_pin(source, staged, entry, lock_file, f"{local or url}; the file was not kept")
        try:
            rows = source.parser(staged)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, csv.Error) as err:
            raise ValueError(f"{source.name} from {local or url}: not a {source.name} file ({err}); nothing was "
                             "kept or pinned") from None
        if not rows:
            raise ValueError(f"{source.name} from {local or url}: no prompts parsed; nothing was kept or pinned")
        os.replace(staged, path)
        return actual
    finally:
        staged.unlink(missing_ok=True)


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
            f"prompts.public.n_pairs: {n_pairs} exceeds the available prompts "
            f"({len(harmful)} harmful, {len(benign)} benign in the chosen sets)"
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
