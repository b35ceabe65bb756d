"""``make reference`` and ``make reference-grid``: a finished run's small tables, copied with their
SHA256SUMS into a reference folder (reference/, reference-grid/) that ``make compare`` reads.

What a reference holds (docs/verification.md): the run's calibration and summary, and per model
its manifest's digests and the tables of MODEL_FILES (GRID_MODEL_FILES for the grid's record),
each exactly as the run's provenance record lists it. Torch-free: it reads tables only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..io.storage import UMASK, make_readable, read_json

SUMS = "SHA256SUMS"
DIGESTS = "manifest_digests.json"  # the manifest's digests only: its other fields vary run to run
MODEL_FILES = (DIGESTS, "inputs.jsonl", "claims.csv", "recovery.csv", "probe.csv", "layer.csv", "module.csv")
REQUIRED_MODEL_FILES = (DIGESTS, "inputs.jsonl", "claims.csv")
# The calibration grid's record (reference-grid/, make reference-grid): what its calibration and
# each plant's ground truth are read from, a few KB a model rather than the per-pair tables.
GRID_MODEL_FILES = (DIGESTS, "claims.csv", "recovery.csv")
UNRECORDED = (DIGESTS, "recovery.csv")  # files a provenance record never lists (written after it, or derived)
SKIPPABLE_UNRECORDED = {"recovery.csv": "recovery"}  # such a file -> the skip_stages entry that leaves it out
RUN_FILES = ("calibration.csv", "summary.csv")
DIGEST_KEYS = ("source", "sha256", "wheel_sha256", "gguf_sha256", "base_sha256", "data_sha256", "files")

class ReferenceError(ValueError):
    """The reference cannot be written or read (a missing or changed file)."""


# ---------------------------------------------------------------- writing the reference
def manifest_digests(manifest: Mapping[str, Any]) -> bytes:
    """The digests of a manifest (weights, source files, the fine-tune's inputs) as sorted JSON:
    what the reference keeps of it, since training times and loss digits vary between runs."""
    kept = {key: manifest[key] for key in DIGEST_KEYS if key in manifest}
    return (json.dumps(kept, indent=2, sort_keys=True) + "\n").encode()


def source_bytes(results: Path, relative: str) -> bytes | None:
    """The bytes the reference keeps for ``relative`` (None: the results have no such file)."""
    path = results / relative
    if Path(relative).name == DIGESTS:
        manifest = path.with_name("manifest.json")
        return manifest_digests(read_json(manifest)) if manifest.is_file() else None
    return path.read_bytes() if path.is_file() else None


def _recorded_run(results: Path, model: str) -> tuple[dict[str, str], set[str]] | None:
    """From the model's provenance.json (None without one): file name -> sha256 of the result
    files it records, and the model's skip_stages in the config it records."""
    provenance = results / model / "provenance.json"
    if not provenance.is_file():
        return None
    record = read_json(provenance)
    entries = record.get("config", {}).get("models", [])
    skips = next((set(m.get("skip_stages") or []) for m in entries if m.get("name") == model), set())
    return dict(record.get("results", {})), skips


def reference_files(results: Path, model_files: Sequence[str] = MODEL_FILES,
                    config: Path | None = None) -> dict[str, bytes]:
    """relative path -> bytes of every file the reference holds (of ``model_files`` for each
    model of the run's summary.csv). A missing summary, calibration or required model file is
    an error, and so is a run of other models than ``config`` lists (results/ holds whichever
    of the default run and the grid ran last)."""
    for name in RUN_FILES:
        if not (results / name).is_file():
            raise ReferenceError(f"{results / name}: missing; run the whole workflow first (make replicate)")
    models = list(dict.fromkeys(pd.read_csv(results / "summary.csv", dtype=str, keep_default_na=False)["model"]))
    skipped: dict[str, set[str]] = {}
    if config is not None:
        import yaml

        entries = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("models", [])
        listed = [m["name"] for m in entries]
        skipped = {m["name"]: set(m.get("skip_stages") or []) for m in entries}
        if sorted(listed) != sorted(models):
            raise ReferenceError(f"{results / 'summary.csv'}: a run of {len(models)} models, not the {len(listed)} "
                                 f"of {config}; run that config first (make replicate CONFIG={config})")
    files = {name: (results / name).read_bytes() for name in RUN_FILES}
    for model in models:
        run = _recorded_run(results, model)  # what the run did, whatever --config names
        recorded, skips = run if run is not None else (None, skipped.get(model, set()))
        for name in model_files:
            if recorded is not None and name not in UNRECORDED and name not in recorded:
                continue  # not part of this run (a stage the model skips): a leftover is no reference
            if name in SKIPPABLE_UNRECORDED and SKIPPABLE_UNRECORDED[name] in skips:
                continue  # the same, for a file no provenance record lists
            data = source_bytes(results, f"{model}/{name}")
            if data is None and name in REQUIRED_MODEL_FILES:
                source = "manifest.json" if name == DIGESTS else name
                raise ReferenceError(f"{results / model / source}: missing; run the whole workflow first")
            if data is not None:
                # the reference is what the run wrote, not a table edited after its provenance record
                expected = (recorded or {}).get(name)
                if expected is not None and hashlib.sha256(data).hexdigest() != expected:
                    raise ReferenceError(f"{results / model / name} changed after {results / model / 'provenance.json'} "
                                         "was written; rerun the workflow")
                files[f"{model}/{name}"] = data
    return files


def write_reference(results: Path, reference: Path, model_files: Sequence[str] = MODEL_FILES,
                    config: Path | None = None) -> list[str]:
    """Replace ``reference`` with the run's small tables and their SHA256SUMS, whole or not at
    all; returns the relative paths written."""
    files = reference_files(results, model_files, config)
    reference.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=reference.parent, prefix=f".{reference.name}."))
    try:
        for relative, data in files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_bytes(data)
            make_readable(staging / relative)
        sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {relative}\n" for relative, data in sorted(files.items()))
        (staging / SUMS).write_text(sums, encoding="utf-8")
        make_readable(staging / SUMS)
        staging.chmod(0o777 & ~UMASK)  # mkdtemp's 0700 would keep the reference from everyone else
        old = reference.with_name(f".{reference.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if reference.exists():
            reference.rename(old)
        staging.rename(reference)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(files)


def read_sums(reference: Path) -> dict[str, str]:
    """relative path -> sha256 from reference/SHA256SUMS."""
    path = reference / SUMS
    if not path.is_file():
        raise ReferenceError(f"{path}: missing; the reference is written by `make reference`")
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, _, relative = line.partition("  ")
        if line and not relative:
            raise ReferenceError(f"{path}: not a sha256sum line: {line!r}")
        if line:
            sums[relative] = digest
    return sums
