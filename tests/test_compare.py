"""make reference and make compare on small synthetic runs: identical trees pass, numbers within
tolerance pass, an edited verdict, token id or base-model digest fails with a table naming it, a
missing file fails with one line, and a fine-tuned model's weights are reported, not failed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harmmed.review.compare import main, write_reference, ReferenceError

CLAIMS = pd.DataFrame({
    "claim": ["B", "C1", "C3"],
    "statistic": ["behaviour_present_TE[refusal]", "late_minus_early_window_NIE_share[refusal]",
                  "final_layer_topk_gate_sufficiency[refusal]"],
    "value": [4.9, 0.36, 0.23], "ci_low": [3.6, 0.22, 0.21], "ci_high": [6.23, 0.5, 0.25],
    "threshold": [0.5, 0.0, 0.5], "verdict": ["supported", "supported", "not supported"],
    "n_pairs": [16, 16, 16], "n_excluded": [0, 0, 0],
})
MODELS = {"base": "pypi_gguf", "plant": "finetune"}


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")


def make_results(root: Path) -> Path:
    """results/ with two models (a downloaded base and a fine-tune) and the run's tables."""
    results = root / "results"
    summary, calibration = [], []
    for model, source in MODELS.items():
        folder = results / model
        write_csv(CLAIMS, folder / "claims.csv")
        layer = pd.DataFrame({"pair_id": ["p1", "p1"], "metric": ["refusal"] * 2, "kind": ["NIE"] * 2,
                              "site": ["residual"] * 2, "layer": [0, 1], "window": [1, 1], "positions": ["all"] * 2,
                              "y_benign": [0.5, 0.5], "y_harmful": [2.5, 2.5], "y_patched": [0.75, 2.25],
                              "effect": [0.25, 1.75]})
        write_csv(layer, folder / "layer.csv")
        (folder / "inputs.jsonl").write_text(json.dumps(
            {"pair_id": "p1", "split": "heldout", "harmful_ids": [1, 2, 3], "benign_ids": [1, 4, 3],
             "target_ids": [9]}) + "\n")
        manifest = {"name": model, "source": source, "sha256": hashlib.sha256(model.encode()).hexdigest(),
                    "files": {"model.safetensors": "ab" * 32, "tokenizer.json": "cd" * 32},
                    "training_seconds": 12.3}  # not kept: it varies run to run
        (folder / "manifest.json").write_text(json.dumps(manifest))
        summary += [{"model": model, **row, "calibration": "no ground truth"} for row in CLAIMS.to_dict("records")]
        calibration += [{"statistic": row["statistic"], "model": model, "expected": "", "verdict": row["verdict"],
                         "value": row["value"], "ci_low": row["ci_low"], "ci_high": row["ci_high"], "correct": "",
                         "ground_truth": ""} for row in CLAIMS.to_dict("records")]
    write_csv(pd.DataFrame(summary).drop(columns="n_excluded"), results / "summary.csv")
    write_csv(pd.DataFrame(calibration), results / "calibration.csv")
    return results


@pytest.fixture
def run(tmp_path) -> tuple[Path, Path]:
    results = make_results(tmp_path / "ours")
    reference = tmp_path / "reference"
    write_reference(results, reference)
    theirs = tmp_path / "theirs" / "results"
    shutil.copytree(results, theirs)
    return theirs, reference


def compare(run, capsys) -> tuple[int, str]:
    status = main([str(run[0]), str(run[1])])
    return status, capsys.readouterr().out


def edit_csv(path: Path, row: int, column: str, value) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    write_csv(frame, path)


def test_reference_holds_the_small_tables_and_their_sums(run):
    _, reference = run
    sums = dict(line.split("  ")[::-1] for line in (reference / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {"calibration.csv", "summary.csv", *(f"{m}/{f}" for m in MODELS for f in (
        "manifest_digests.json", "inputs.jsonl", "claims.csv", "layer.csv"))}
    for relative, digest in sums.items():
        assert hashlib.sha256((reference / relative).read_bytes()).hexdigest() == digest
    assert "training_seconds" not in (reference / "plant" / "manifest_digests.json").read_text()


def test_the_grid_record_keeps_claims_recovery_and_digests_and_compares(tmp_path, capsys):
    """make reference-grid: each model's claims and digests, and its recovery where it has one,
    no per-pair table; a run compared with it passes, and an edited verdict still fails."""
    results = make_results(tmp_path / "ours")
    (results / "plant" / "recovery.csv").write_text(
        "model,plant,statistic,value,ci_low,ci_high,target,pass,n_pairs\n"
        "plant,plant,necessity_planted,0.8,0.7,0.9,>= 0.5,True,16\n")
    record = tmp_path / "reference-grid"
    assert main(["--write-reference", "--grid", str(results), str(record)]) == 0
    sums = {line.split("  ")[1] for line in (record / "SHA256SUMS").read_text().splitlines()}
    assert sums == {"calibration.csv", "summary.csv", "plant/recovery.csv",
                    *(f"{m}/{f}" for m in MODELS for f in ("manifest_digests.json", "claims.csv"))}
    capsys.readouterr()
    assert main([str(results), str(record)]) == 0, capsys.readouterr().out
    edit_csv(results / "plant" / "recovery.csv", 0, "pass", "False")
    assert main([str(results), str(record)]) == 1


def test_a_reference_of_another_configs_run_is_refused(tmp_path, capsys):
    """results/ holds whichever of the default run and the grid ran last: the reference names the
    config whose models the run must be, and a run of other models writes nothing."""
    results = make_results(tmp_path / "ours")
    config = tmp_path / "grid.yaml"
    config.write_text("models:\n  - {name: base}\n  - {name: plant}\n  - {name: grid-plant}\n")
    assert main(["--write-reference", "--config", str(config), str(results), str(tmp_path / "ref")]) == 1
    err = capsys.readouterr().err
    assert "a run of 2 models, not the 3 of" in err and "make replicate CONFIG=" in err and err.count("\n") == 1
    assert not (tmp_path / "ref").exists()
    config.write_text("models:\n  - {name: plant}\n  - {name: base}\n")
    assert main(["--write-reference", "--config", str(config), str(results), str(tmp_path / "ref")]) == 0


def test_a_recovery_the_config_skips_is_no_reference(tmp_path):
    """recovery.csv is written after the provenance record, which cannot list it: a leftover of an
    earlier run is left out by the config's skip_stages instead."""
    results = make_results(tmp_path / "ours")
    for model in MODELS:
        write_csv(pd.DataFrame({"model": [model], "statistic": ["necessity_planted"], "value": [0.9]}),
                  results / model / "recovery.csv")
    config = tmp_path / "config.yaml"
    config.write_text("models:\n  - {name: base, skip_stages: [recovery]}\n  - {name: plant}\n")
    assert main(["--write-reference", "--config", str(config), str(results), str(tmp_path / "ref")]) == 0
    assert (tmp_path / "ref" / "plant" / "recovery.csv").is_file()
    assert not (tmp_path / "ref" / "base" / "recovery.csv").exists()
    # a provenance record's config says what the run skipped, whatever config is named
    (results / "base" / "provenance.json").write_text(json.dumps(
        {"results": {"claims.csv": hashlib.sha256((results / "base" / "claims.csv").read_bytes()).hexdigest(),
                     "inputs.jsonl": hashlib.sha256((results / "base" / "inputs.jsonl").read_bytes()).hexdigest()},
         "config": {"models": [{"name": "base", "skip_stages": ["recovery"]}]}}))
    config.write_text("models:\n  - {name: base}\n  - {name: plant}\n")
    assert main(["--write-reference", "--config", str(config), str(results), str(tmp_path / "ref2")]) == 0
    assert not (tmp_path / "ref2" / "base" / "recovery.csv").exists()
    assert (tmp_path / "ref2" / "base" / "claims.csv").is_file()


def test_identical_trees_pass(run, capsys):
    status, out = compare(run, capsys)
    assert status == 0, out
    assert "10 files compared, 10 byte-identical" in out and "compare: OK" in out and "| status" not in out


def test_numbers_within_tolerance_pass(run, capsys):
    results, _ = run
    edit_csv(results / "base" / "claims.csv", 1, "value", "0.38")  # 0.02 from 0.36: tolerance 0.05
    edit_csv(results / "base" / "claims.csv", 1, "ci_high", "0.58")  # CI bound: 0.10
    edit_csv(results / "plant" / "layer.csv", 0, "y_patched", "0.7504")  # per-pair outcome: 1e-3
    status, out = compare(run, capsys)
    assert status == 0, out
    assert "3 numbers differ within tolerance" in out and "| status" not in out


def test_a_number_outside_tolerance_is_reported_without_failing(run, capsys):
    results, _ = run
    edit_csv(results / "base" / "claims.csv", 2, "value", "0.3")
    status, out = compare(run, capsys)
    assert status == 0, out
    line = next(line for line in out.splitlines() if "final_layer_topk_gate_sufficiency" in line)
    assert "differs" in line and "0.23 ± 0.05" in line and "| 0.3 " in line


def test_an_edited_verdict_fails_with_a_table_naming_it(run, capsys):
    results, _ = run
    edit_csv(results / "plant" / "claims.csv", 1, "verdict", "inconclusive")
    status, out = compare(run, capsys)
    assert status == 1
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("|")]
    assert rows[0] == ["status", "model", "file", "row", "quantity", "expected", "found"]
    assert ["FAIL", "plant", "plant/claims.csv", "C1 late_minus_early_window_NIE_share[refusal]", "verdict",
            "supported", "inconclusive"] in rows
    assert out.splitlines()[-1].startswith("compare: FAIL")


def test_a_missing_file_fails_with_one_line(run, capsys):
    results, _ = run
    (results / "base" / "layer.csv").unlink()
    status, out = compare(run, capsys)
    assert status == 1
    assert [line for line in out.splitlines() if "layer.csv" in line] == [
        f"missing: {results / 'base' / 'layer.csv'} (the reference has {run[1] / 'base' / 'layer.csv'})"]


def test_a_missing_model_is_one_line(run, capsys):
    results, _ = run
    shutil.rmtree(results / "plant")
    status, out = compare(run, capsys)
    assert status == 1 and [line for line in out.splitlines() if line.startswith("missing")] == [
        f"missing: {results / 'plant'}/ (the reference has 4 files of model plant)"]


def test_finetuned_weights_are_reported_and_base_weights_fail(run, capsys):
    results, _ = run
    for model in MODELS:
        manifest = json.loads((results / model / "manifest.json").read_text())
        manifest["sha256"], manifest["files"]["model.safetensors"] = "ee" * 32, "ff" * 32
        (results / model / "manifest.json").write_text(json.dumps(manifest))
    status, out = compare(run, capsys)
    assert status == 1
    lines = [line for line in out.splitlines() if "manifest_digests.json" in line]
    assert len(lines) == 4
    assert all(line.startswith("| differs") and "fine-tuned weights: reported only" in line
               for line in lines if "| plant " in line)
    assert all(line.startswith("| FAIL") for line in lines if "| base " in line)


def test_a_changed_token_id_fails(run, capsys):
    results, _ = run
    path = results / "base" / "inputs.jsonl"
    path.write_text(path.read_text().replace("[1, 4, 3]", "[1, 5, 3]"))
    status, out = compare(run, capsys)
    assert status == 1
    assert any("| FAIL" in line and "benign_ids" in line and "[1] 4" in line and "[1] 5" in line
               for line in out.splitlines())


def test_a_damaged_reference_fails(run, capsys):
    _, reference = run
    edit_csv(reference / "base" / "claims.csv", 0, "verdict", "inconclusive")
    status, out = compare(run, capsys)
    assert status == 1 and f"reference damaged: {reference / 'base' / 'claims.csv'}" in out


def test_the_reference_is_what_the_run_recorded(tmp_path):
    results = make_results(tmp_path)
    (results / "base" / "provenance.json").write_text(json.dumps({"results": {"claims.csv": "00" * 32}}))
    with pytest.raises(ReferenceError, match="changed after"):
        write_reference(results, tmp_path / "reference")
    assert not (tmp_path / "reference").exists()


def test_a_leftover_the_run_did_not_record_is_left_out(tmp_path):
    """A table from an earlier run of a stage the model now skips is not this run's: with a
    provenance record, only the files it lists are copied."""
    results = make_results(tmp_path)
    recorded = {name: hashlib.sha256((results / "base" / name).read_bytes()).hexdigest()
                for name in ("claims.csv", "inputs.jsonl")}
    (results / "base" / "provenance.json").write_text(json.dumps({"results": recorded}))
    written = write_reference(results, tmp_path / "reference")
    assert "base/claims.csv" in written and "base/layer.csv" not in written
    assert "plant/layer.csv" in written  # no provenance record: every table there is copied


def test_many_numbers_outside_tolerance_are_one_line():
    from harmmed.review.compare import TABLES, compare_tables

    rows = pd.DataFrame({"pair_id": [f"p{i}" for i in range(8)], "metric": "refusal", "kind": "NIE",
                         "site": "mlp", "layer": "3", "window": "1", "positions": "all", "y_benign": "0.5",
                         "y_harmful": "2.5", "y_patched": "1.0", "effect": "0.5"})
    moved = rows.assign(y_patched=[f"{1.0 + 0.01 * (i + 1)}" for i in range(8)])
    findings, within = compare_tables(rows, moved, TABLES["module.csv"], "plant", "plant/module.csv")
    assert within == 0 and len(findings) == 1
    assert findings[0].row == "8 of 8 rows" and findings[0].quantity == "y_patched"
    assert findings[0].found == "max |diff| 0.08 (p7 refusal NIE mlp 3 1 all)"
