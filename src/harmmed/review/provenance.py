"""What a result was produced from: the weights, the inputs, the code, the machine.

Torch-free, so the provenance and verification checks also run where only the tables are; the
weight and device checks it records live in :mod:`harmmed.models.checks`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from ..io.fetch import portable_path, sha256_file
from ..models.checks import check_weights

VERSIONED_PACKAGES = ("torch", "transformers", "snakemake", "numpy", "pandas", "safetensors", "tokenizers")


def git_state(repo: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it (None outside git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if commit else None}


def short_commit(state: Mapping[str, Any]) -> str:
    """The commit as it appears in a bundle's name: 12 hex digits, ``-dirty`` when it was."""
    if not state.get("commit"):
        return "nogit"
    return state["commit"][:12] + ("-dirty" if state.get("dirty") else "")


def config_digest(cfg: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seeds(cfg: Any, prefix: str = "") -> dict[str, int]:
    """Every ``*seed`` key of the config, by its dotted path."""
    found: dict[str, int] = {}
    if isinstance(cfg, Mapping):
        for key, value in cfg.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if str(key).endswith("seed") and isinstance(value, int):
                found[path] = value
            else:
                found.update(seeds(value, path))
    return found


def digests(paths: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    return {portable_path(p): sha256_file(Path(p)) for p in sorted(set(map(str, paths)))}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_provenance(cfg: Mapping[str, Any], manifest: Mapping[str, Any], dataset_files: Iterable[str],
                     result_files: Iterable[str], repo: str | os.PathLike[str], threads: int | None) -> dict:
    """The provenance record of one model's results (see docs/verification.md)."""
    spec = next(m for m in cfg["models"] if m["name"] == manifest["name"])
    return {
        "model": manifest["name"],
        "git": git_state(repo),
        "config": cfg,
        "config_sha256": config_digest(cfg),
        "versions": versions(),
        "platform": {"system": platform.platform(), "machine": platform.machine(), "executable": sys.executable,
                     "cpu_count": os.cpu_count()},
        "device": spec.get("device", "cpu"),
        "dtype": spec.get("dtype", "float32"),
        "threads": threads,
        "weights": {"path": manifest["path"], "sha256": check_weights(manifest)},
        "datasets": digests(dataset_files),
        "results": {Path(p).name: sha256_file(Path(p)) for p in sorted(map(str, result_files))},
        "seeds": seeds(cfg),
    }
