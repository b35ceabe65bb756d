"""The checks every model load passes first: the weights are the bytes the manifest records,
and the device the spec asks for exists.

Kept apart from the loader so provenance and verification can hash weights without torch
(torch is imported only to look for a CUDA device).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class WeightsChangedError(RuntimeError):
    """The weights on disk are not the ones the manifest (or provenance) records."""


class DeviceUnavailableError(RuntimeError):
    """A model spec asks for a device this machine does not have."""


def weights_digest(path: str | os.PathLike[str]) -> str:
    from .loading import safetensors_digest

    return safetensors_digest(Path(path))


def check_weights(manifest: Mapping[str, Any], expected: str | None = None, where: str = "the manifest") -> str:
    """Hash the weights at ``manifest["path"]`` and fail unless they are the recorded ones;
    returns the digest. Every stage that loads a model calls this before computing anything."""
    expected = expected or manifest.get("sha256")
    if not expected:
        raise KeyError(f"model {manifest.get('name')}: the manifest records no 'sha256' of its weights, so they "
                       "cannot be checked; rerun download_model")
    actual = weights_digest(manifest["path"])
    if actual != expected:
        raise WeightsChangedError(
            f"model {manifest.get('name')}: the weights at {manifest['path']} have sha256 {actual}, but {where} "
            f"records {expected}. They changed after the manifest was written; rerun the workflow from "
            f"download_model (snakemake --forcerun download_model) so every table comes from one set of weights."
        )
    return actual


def check_device(device: str, where: str = "device") -> None:
    """Fail now, not deep inside a stage, when ``cuda``/``cuda:N`` is asked for and absent."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"{where}: {device!r}, but torch {torch.__version__} on this machine has no CUDA device "
            f"(torch.cuda.is_available() is False); use device: cpu or auto, or run on a GPU machine")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise DeviceUnavailableError(
            f"{where}: {device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")


def check_config_devices(cfg: Mapping[str, Any]) -> None:
    """Every model's device, checked before any job starts."""
    for i, spec in enumerate(cfg["models"]):
        check_device(spec.get("device", "cpu"), f"models[{i}].device ({spec['name']})")
