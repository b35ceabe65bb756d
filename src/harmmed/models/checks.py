"""The checks every model load passes: the device the spec asks for exists, every file of the
model folder (weights, tokenizer, chat template, config) is the bytes the manifest records, and
the manifest's fields derived from the model (layers, widths, refusal token ids, template) are
what the loaded model gives.

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


class ManifestMismatchError(RuntimeError):
    """A manifest field derived from the model differs from what the loaded model gives."""


# Manifest fields read off the loaded model and tokenizer (download_model writes them, every
# later load re-derives them): a hand-edited manifest can never steer a stage.
DERIVED_FIELDS = ("architecture", "n_layers", "d_model", "d_mlp", "vocab_size", "max_positions", "chat_template",
                  "refusal_token_ids", "refusal_tokens")


def weights_digest(path: str | os.PathLike[str]) -> str:
    from .loading import safetensors_digest

    return safetensors_digest(Path(path))


def weights_digest_from(digests: Mapping[str, str]) -> str:
    """:func:`weights_digest` from a folder's file digests (the same formula, no second read)."""
    import hashlib

    names = sorted(name for name in digests if name.endswith(".safetensors"))
    return hashlib.sha256("".join(f"{digests[name]}  {name}\n" for name in names).encode()).hexdigest()


def check_weights(manifest: Mapping[str, Any], expected: str | None = None, where: str = "the manifest",
                  digests: Mapping[str, str] | None = None) -> str:
    """Hash the weights at ``manifest["path"]`` (or take them from the folder's ``digests``) and
    fail unless they are the recorded ones; returns the digest. Every stage that loads a model
    calls this before computing anything."""
    expected = expected or manifest.get("sha256")
    if not expected:
        raise KeyError(f"model {manifest.get('name')}: the manifest records no 'sha256' of its weights, so they "
                       "cannot be checked; rerun download_model")
    actual = weights_digest_from(digests) if digests is not None else weights_digest(manifest["path"])
    if actual != expected:
        raise WeightsChangedError(
            f"model {manifest.get('name')}: the weights at {manifest['path']} have sha256 {actual}, but {where} "
            f"records {expected}. They changed after the manifest was written; rerun the workflow from the rule "
            f"that wrote it (snakemake --forcerun download_model, or finetune_model for a fine-tune) so every "
            f"table comes from one set of weights."
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


def model_file_digests(path: str | os.PathLike[str], weights: bool = True) -> dict[str, str]:
    """sha256 of every file of a model folder by name: weights, tokenizer files, chat template,
    config (hidden files aside; without ``weights``, the *.safetensors files too)."""
    from ..io.fetch import sha256_file

    return {f.name: sha256_file(f) for f in sorted(Path(path).iterdir())
            if f.is_file() and not f.name.startswith(".") and (weights or not f.name.endswith(".safetensors"))}


def check_model_files(manifest: Mapping[str, Any], where: str = "the manifest", weights: bool = True,
                      digests: Mapping[str, str] | None = None) -> dict[str, str]:
    """Fail unless the model folder holds exactly the files, with exactly the bytes, that the
    manifest records (a tokenizer or chat template edited in place changes every input); without
    ``weights`` the *.safetensors files are left out (a tokenizer-only load). Returns the digests."""
    recorded = manifest.get("files")
    if not isinstance(recorded, Mapping):
        raise KeyError(f"model {manifest.get('name')}: {where} records no 'files' digests of the model folder, so "
                       "its tokenizer and chat template cannot be checked; rerun download_model")
    if digests is None:
        digests = model_file_digests(manifest["path"], weights)
    if not weights:
        recorded = {name: digest for name, digest in recorded.items() if not name.endswith(".safetensors")}
    problems = [f"{name} changed" for name in sorted(recorded.keys() & digests.keys()) if recorded[name] != digests[name]]
    problems += [f"{name} missing" for name in sorted(recorded.keys() - digests.keys())]
    problems += [f"{name} added" for name in sorted(digests.keys() - recorded.keys())]
    if problems:
        raise WeightsChangedError(
            f"model {manifest.get('name')}: the model folder {manifest['path']} differs from what {where} records "
            f"({'; '.join(problems)}). Rerun the workflow from the rule that wrote the manifest (snakemake "
            "--forcerun download_model, or finetune_model for a fine-tune) so every table comes from one model.")
    return dict(digests)


def refusal_token_ids(tokenizer: Any, phrases: list[str]) -> list[int]:
    """First token of each refusal phrase as it would open the response; sorted, unique."""
    ids: set[int] = set()
    for phrase in phrases:
        encoded = tokenizer(phrase, add_special_tokens=False)["input_ids"]
        if not encoded:
            raise ValueError(f"metrics.refusal_phrases: {phrase!r} encodes to no tokens")
        ids.add(int(encoded[0]))
    return sorted(ids)


def derived_fields(model: Any, tokenizer: Any, phrases: list[str]) -> dict[str, Any]:
    """The manifest fields read off a loaded model and its tokenizer (:data:`DERIVED_FIELDS`)."""
    from .arch import resolve_sites

    sites = resolve_sites(model)
    refusal_ids = refusal_token_ids(tokenizer, phrases)
    return {
        "architecture": model.config.model_type, "n_layers": sites.n_layers, "d_model": sites.d_model,
        "d_mlp": sites.d_mlp, "vocab_size": model.get_output_embeddings().weight.shape[0],
        "max_positions": getattr(model.config, "max_position_embeddings", None), "chat_template": tokenizer.chat_template,
        "refusal_token_ids": refusal_ids, "refusal_tokens": [tokenizer.convert_ids_to_tokens(i) for i in refusal_ids],
    }


def check_derived_fields(manifest: Mapping[str, Any], model: Any, tokenizer: Any, where: str = "the manifest") -> None:
    """Fail when a manifest field derived from the model differs from what the model gives."""
    if "refusal_phrases" not in manifest:
        raise KeyError(f"model {manifest.get('name')}: {where} records no 'refusal_phrases'; rerun download_model")
    actual = derived_fields(model, tokenizer, list(manifest["refusal_phrases"]))
    wrong = [key for key in DERIVED_FIELDS if manifest.get(key) != actual[key]]
    if wrong:
        detail = "; ".join(f"{key} is {manifest.get(key)!r} there, the model gives {actual[key]!r}"
                           for key in wrong if key != "chat_template")
        if "chat_template" in wrong:
            detail = "; ".join(filter(None, [detail, "chat_template differs"]))
        raise ManifestMismatchError(f"model {manifest.get('name')}: {where} does not describe the model at "
                                    f"{manifest['path']} ({detail}). It was edited by hand or written for another "
                                    "model; rerun download_model.")
