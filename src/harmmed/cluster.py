"""Resource requests of the workflow's jobs, and the check that a cluster can ever run them.

SLURM accepts a job that asks for more CPUs or memory than any node has and leaves it pending
for ever (``Reason=PartitionConfig``), so the workflow checks every model job against the
cluster's nodes before it is submitted and stops with a message naming the setting to change.
Torch-free: the Snakefile imports it on the submitting host.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Peak resident memory of a model job is about three copies of the weights (loading, the
# model itself, activations and caches) plus the interpreter and libraries. Measured: 1.7 GB
# peak for SmolLM2-135M, whose safetensors weights take 540 MB.
WEIGHT_COPIES = 3
BASE_MEM_MB = 1024


def weights_mb(model_dir: str | Path) -> int:
    """Size of the safetensors weights in ``model_dir`` in MB (0 when there are none yet)."""
    files = Path(model_dir).glob("*.safetensors") if Path(model_dir).is_dir() else []
    return -(-sum(f.stat().st_size for f in files) // 2**20)


def model_dir_mem_mb(model_dir: str | Path) -> int:
    """Memory a job that loads the model in ``model_dir`` asks for: a few copies of its weights."""
    return WEIGHT_COPIES * weights_mb(model_dir) + BASE_MEM_MB


def model_mem_mb(manifest_path: str | Path) -> int:
    """Memory a job that loads the manifest's model asks for."""
    return model_dir_mem_mb(json.loads(Path(manifest_path).read_text(encoding="utf-8"))["path"])


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


def parse_sinfo(text: str) -> list[Node]:
    """Nodes from ``sinfo -h -N -o '%N|%c|%m|%G'`` (name, CPUs, memory in MB, gres)."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, cpus, mem, gres = line.strip().split("|")
        gpus = sum(int(n) for n in re.findall(r"gpu(?::[^:,()]+)*:(\d+)", gres))
        nodes.append(Node(name, int(cpus.rstrip("+")), int(mem.rstrip("+")), gpus))
    return nodes


@lru_cache(maxsize=1)
def slurm_nodes() -> tuple[Node, ...]:
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G"], capture_output=True, text=True,
                          timeout=60, check=True)
    return tuple(parse_sinfo(done.stdout))


class JobNeverFits(ValueError):
    """A job asks for more than any node of the cluster has."""


def check_fits(rule: str, threads: int, mem_mb: int, gpus: int, nodes: tuple[Node, ...] | list[Node]) -> None:
    """Raise :class:`JobNeverFits` unless some node has ``threads`` CPUs, ``mem_mb`` MB and
    ``gpus`` GPUs at once."""
    if any(n.cpus >= threads and n.mem_mb >= mem_mb and n.gpus >= gpus for n in nodes):
        return
    largest = ", ".join(sorted({f"{n.cpus} CPUs / {n.mem_mb} MB / {n.gpus} GPUs" for n in nodes})) or "no nodes"
    hints = []
    if threads > max((n.cpus for n in nodes), default=0):
        hints.append("lower HARMMED_SLURM_CPUS (or --max-threads)")
    if gpus > max((n.gpus for n in nodes), default=0):
        hints.append("set HARMMED_SLURM_GPUS=0 (no node has that many GPUs)")
    if mem_mb > max((n.mem_mb for n in nodes), default=0):
        hints.append(f"use a smaller model or a node with more memory (--set-resources {rule}:mem_mb=...)")
    raise JobNeverFits(
        f"rule {rule}: asks for {threads} CPUs, {mem_mb} MB and {gpus} GPUs, but no SLURM node has that "
        f"(nodes: {largest}); it would pend for ever. {'; '.join(hints) or 'no node has all of it at once: lower HARMMED_SLURM_CPUS (or --max-threads)'}.")
