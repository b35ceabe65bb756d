"""File I/O shared by every stage: atomic writes, the one table writer, JSON and manifests.

The lowest floor of the package: it imports nothing of harmmed but the constants, and no torch,
so figure and claims jobs can use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

FLOAT_FORMAT = "%.9g"
MANIFEST_KEYS = ("name", "path", "refusal_token_ids")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path that replaces ``path`` only if the block succeeds: no half-written
    outputs survive a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        make_readable(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once: setting it to read it is not thread-safe


def make_readable(path: str | Path) -> None:
    """The mode a plain ``open`` would give: mkstemp's 0600 would keep results from everyone else."""
    os.chmod(path, 0o666 & ~UMASK)


def write_json(obj: Mapping[str, Any], path: str | Path) -> None:
    """Sorted, indented JSON, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    """A JSON file; a broken one is one error naming it and the line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); it was edited "
                         "or truncated, rerun the rule that writes it") from None


def read_jsonl(path: str | Path) -> list[Any]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


def read_manifest(path: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A model manifest (download_model's output), checked for the keys every stage needs.

    An already-read manifest (a mapping, as tests build in memory) passes through the same check.
    """
    manifest = dict(path) if isinstance(path, Mapping) else read_json(path)
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"{path if not isinstance(path, Mapping) else 'manifest'}: "
                         f"missing key(s) {', '.join(missing)}")
    return manifest


def write_table(rows: Iterable[Mapping[str, Any]] | pd.DataFrame, columns: Sequence[str],
                path: str | Path, float_format: str = FLOAT_FORMAT) -> None:
    """The one CSV writer: fixed column order, ``%.9g`` floats (summary tables such as claims
    round coarser), ``\\n`` line ends, atomic, so reruns are byte-identical and a failure leaves
    nothing half-written."""
    frame = pd.DataFrame(rows if isinstance(rows, pd.DataFrame) else list(rows), columns=list(columns))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")


def read_table(path: str | Path, text_columns: Sequence[str] = ("positions",)) -> pd.DataFrame:
    """A table written by :func:`write_table`; ``text_columns`` stay strings and empty cells stay
    empty strings (``positions`` holds labels such as ``all`` or ``3``)."""
    return pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False)
