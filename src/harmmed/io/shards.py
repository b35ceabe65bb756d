"""Splitting a model stage's pairs into N jobs (``shards: N``) and merging their tables.

Shard ``i`` of ``N`` takes a contiguous run of the stage's selected pairs, so concatenating the
shard tables in shard order gives the rows of the unsharded run in the same order, and every
row is computed from its own pair only: the merged table is byte-identical to an unsharded run.
Selections that need every pair (the neuron ranking, bootstraps, the probe's folds) read the
merged tables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from .storage import atomic_path, write_json

T = TypeVar("T")
Shard = tuple[int, int] | str  # (index, count), or its {shard} wildcard value "<index>of<count>"
WHOLE: Shard = (0, 1)
_SHARD_RE = re.compile(r"^(\d+)of(\d+)$")


def shard_ids(count: int) -> list[str]:
    """The ``{shard}`` wildcard values of ``count`` shards: 0of4, 1of4, ..."""
    if count < 1:
        raise ValueError(f"shards: must be at least 1, got {count}")
    return [f"{i}of{count}" for i in range(count)]


def parse_shard(shard_id: Shard) -> tuple[int, int]:
    """(index, count) of a shard given as a tuple or as its wildcard value."""
    if not isinstance(shard_id, str):
        return shard_id
    match = _SHARD_RE.match(shard_id)
    if not match or int(match[1]) >= int(match[2]):
        raise ValueError(f"shard {shard_id!r}: expected <index>of<count> with index < count, e.g. 0of4")
    return int(match[1]), int(match[2])


def take_shard(items: Sequence[T], shard: Shard) -> list[T]:
    """Shard ``index`` of ``count``: the contiguous slice ``[index*n//count, (index+1)*n//count)``."""
    index, count = parse_shard(shard)
    return list(items[index * len(items) // count: (index + 1) * len(items) // count])


def shard_offset(n_items: int, shard: Shard) -> int:
    """Position in the whole list of a shard's first item (for per-pair seeds and plans)."""
    index, count = parse_shard(shard)
    return index * n_items // count


def concat_tables(paths: Sequence[str | Path], out: str | Path) -> int:
    """Concatenate CSV shards (same header) in the given order; returns the number of rows."""
    header, body = None, []
    for path in paths:
        lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
        if not lines:
            raise ValueError(f"{path}: empty shard table (no header)")
        if header is not None and lines[0] != header:
            raise ValueError(f"{path}: header {lines[0].strip()!r} differs from the first shard's {header.strip()!r}")
        header = lines[0]
        body += lines[1:]
    with atomic_path(out) as tmp:
        tmp.write_text((header or "") + "".join(body), encoding="utf-8")
    return len(body)


def merge_json_objects(paths: Sequence[str | Path], out: str | Path) -> None:
    """Union of JSON objects with disjoint keys (e.g. heatmap tokens by pair id)."""
    merged: dict = {}
    for path in paths:
        part = json.loads(Path(path).read_text(encoding="utf-8"))
        if overlap := sorted(set(part) & set(merged)):
            raise ValueError(f"{path}: keys {overlap[:5]} already in an earlier shard")
        merged.update(part)
    write_json(merged, out)
