"""Reviewer verification on the tiny workflow: provenance, make verify (and that it fails when a
table value or the weights change), and bundles that redraw every figure without torch."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from test_workflow import snakemake, tiny_config

from harmmed.config import load_config

REPO = Path(__file__).resolve().parents[1]
TABLES = ["layer", "module", "heatmap", "severed", "neuron", "neuron_attn_dims", "gating", "token", "claims"]
NO_TORCH = ("import runpy, sys\n"
            "for name in ('torch', 'transformers', 'safetensors', 'accelerate'):\n"
            "    sys.modules[name] = None  # any import of them now raises ImportError\n"
            f"sys.argv = [{str(REPO / 'workflow' / 'scripts' / 'redraw.py')!r}, *sys.argv[1:]]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")


@pytest.fixture(scope="module")
def verified_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("verified")
    config = tiny_config(workdir)
    done = snakemake(workdir, config, "all", "verify_all", "bundle_all")
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir, config


def test_provenance_records_code_config_machine_and_every_digest(verified_run):
    workdir, config = verified_run
    results = workdir / "results" / "tiny"
    record = json.loads((results / "provenance.json").read_text())
    manifest = json.loads((results / "manifest.json").read_text())
    assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
    assert record["config"] == load_config(config) and len(record["config_sha256"]) == 64
    assert {"python", "torch", "transformers", "snakemake"} <= set(record["versions"])
    assert record["versions"]["torch"] and record["device"] == "cpu" and record["dtype"] == "float32"
    assert record["threads"] >= 1 and record["platform"]["machine"]  # common.smk's MODEL_THREADS
    assert record["weights"] == {"path": "tiny-model", "sha256": manifest["sha256"]}
    assert manifest["path"] == "tiny-model"  # relative: identical runs in two folders agree
    for name, digest in record["results"].items():
        assert hashlib.sha256((results / name).read_bytes()).hexdigest() == digest
    assert {"layer.csv", "neuron.csv", "token.csv", "inputs.jsonl", "claims.csv", "manifest.json"} <= set(record["results"])
    assert list(record["datasets"].values()) == [hashlib.sha256((workdir / "pairs.csv").read_bytes()).hexdigest()]
    assert record["seeds"]["prompts.split_seed"] == 0 and record["seeds"]["gating.seed"] == 0


def test_verification_passes_on_every_table(verified_run):
    workdir, _ = verified_run
    table = pd.read_csv(workdir / "results" / "tiny" / "verification.csv", keep_default_na=False)
    assert list(table.columns) == ["table", "row_key", "quantity", "ours", "reference", "abs_diff"]
    counts = table.groupby("table")["row_key"].nunique()
    assert counts.to_dict() == {name: 20 for name in TABLES}
    assert set(table["quantity"]) == {"y_benign", "y_harmful", "y_patched"}
    assert table["abs_diff"].max() < 1e-5 and (table["ours"] != 0).all()
    dims = table[table["table"] == "neuron_attn_dims"]["row_key"]
    assert dims.str.contains("site=attn_dims").all()
    report = (workdir / "figures" / "tiny" / "verification.md").read_text()
    assert all(f"| {name} | 20 | " in report for name in TABLES)
    checks = [line for line in report.splitlines() if line.startswith(("| weights", "| sha256", "| inputs", "| claims"))]
    assert len(checks) >= 22 and all("| PASS |" in line for line in checks)  # weights, every file, encoding, claims
    assert "FAIL" not in report and "**PASS**" in report


def _copy(workdir: Path, tmp_path: Path, monkeypatch) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns(".snakemake"))
    monkeypatch.chdir(copy)
    return copy


def _verify(config: Path):
    from harmmed.stages import verify

    verify(load_config(config), "results/tiny", "verification.csv", "verification.md")


def test_verify_fails_when_one_value_moves_by_1e_3(verified_run, tmp_path, monkeypatch):
    from harmmed.review.verify import VerificationFailed

    workdir, config = verified_run
    copy = _copy(workdir, tmp_path, monkeypatch)
    results = copy / "results" / "tiny"
    sampled = pd.read_csv(results / "verification.csv", keep_default_na=False)
    key = sampled[sampled["table"] == "layer"]["row_key"].iloc[3]
    lines = (results / "layer.csv").read_text().splitlines(keepends=True)
    header = lines[0].strip().split(",")
    fields = dict(item.split("=", 1) for item in key.split(";"))
    index = next(i for i, line in enumerate(lines[1:], 1)
                 if all(dict(zip(header, line.strip().split(",")))[c] == v for c, v in fields.items()))
    cells = lines[index].rstrip("\n").split(",")
    column = header.index("y_patched")
    cells[column] = f"{float(cells[column]) + 1e-3:.9g}"
    lines[index] = ",".join(cells) + "\n"
    (results / "layer.csv").write_text("".join(lines))

    with pytest.raises(VerificationFailed, match="layer"):
        _verify(config)
    report = Path("verification.md").read_text()
    assert "| sha256 results/layer.csv | FAIL |" in report  # the provenance already catches it

    record = json.loads((results / "provenance.json").read_text())  # a forger would update it
    record["results"]["layer.csv"] = hashlib.sha256((results / "layer.csv").read_bytes()).hexdigest()
    (results / "provenance.json").write_text(json.dumps(record))
    with pytest.raises(VerificationFailed, match="layer") as info:
        _verify(config)
    assert "sha256" not in str(info.value)  # only the recomputation can catch a forged record
    rows = pd.read_csv("verification.csv", keep_default_na=False)
    worst = rows.groupby("table")["abs_diff"].max()
    assert 9e-4 < worst["layer"] < 1.1e-3
    assert (worst.drop("layer") < 1e-5).all()
    assert "| layer | 20 | 0.001 | FAIL |" in Path("verification.md").read_text()


def test_verify_fails_when_the_weights_change(verified_run, tmp_path, monkeypatch):
    from harmmed.models.loading import load_model
    from harmmed.review.verify import VerificationFailed

    workdir, config = verified_run
    _copy(workdir, tmp_path, monkeypatch)
    model, _ = load_model("tiny-model")
    model.get_output_embeddings().weight.data[0, 0] += 0.5
    model.save_pretrained("tiny-model")
    with pytest.raises(VerificationFailed, match="weights sha256"):
        _verify(config)
    report = Path("verification.md").read_text()
    assert "| weights sha256 | FAIL |" in report and "| layer | 0 | nan | NOT RUN |" in report


def test_bundle_redraws_every_figure_without_torch(verified_run, tmp_path):
    workdir, _ = verified_run
    [bundle] = [p for p in workdir.glob("results-tiny-*.tar.gz") if not p.name.startswith("results-tiny-refusal-")]
    assert (workdir / f"{bundle.name}.sha256").read_text().split() == [
        hashlib.sha256(bundle.read_bytes()).hexdigest(), bundle.name]
    out = tmp_path / "redrawn"
    done = subprocess.run([sys.executable, "-c", NO_TORCH, str(bundle), str(out)], capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin",
                                             "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr[-3000:]
    original = workdir / "figures" / "tiny"
    redrawn = out / "figures" / "tiny"
    pngs = sorted(p.name for p in original.glob("*.png"))
    assert len(pngs) == 17 and sorted(p.name for p in redrawn.glob("*.png")) == pngs
    for name in [*pngs, "claims.md"]:
        assert (redrawn / name).read_bytes() == (original / name).read_bytes(), name
    assert "layer_curves.png" in (redrawn / "report.html").read_text()

    tampered = tmp_path / bundle.name
    tampered.write_bytes(bundle.read_bytes()[:-1] + bytes([bundle.read_bytes()[-1] ^ 1]))
    shutil.copy(workdir / f"{bundle.name}.sha256", tmp_path)
    bad = subprocess.run([sys.executable, "-c", NO_TORCH, str(tampered), str(tmp_path / "x")], capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 1 and "does not match" in bad.stderr and not (tmp_path / "x").exists()


def test_bundle_is_byte_reproducible(verified_run, tmp_path):
    from harmmed.review.bundle import pack

    workdir, _ = verified_run
    [bundle] = [p for p in workdir.glob("results-tiny-*.tar.gz") if not p.name.startswith("results-tiny-refusal-")]
    again = pack(workdir / "results" / "tiny" / "provenance.json", tmp_path / bundle.name,
                 workdir / "results" / "calibration.csv")
    assert again.read_bytes() == bundle.read_bytes()
    with tarfile.open(bundle, "r:gz") as tar:  # claims.md's calibration marks travel with the bundle
        assert "results/calibration.csv" in tar.getnames()


def test_report_holds_the_figures_of_the_stages_the_model_ran(tmp_path):
    """A plant that skips figures, tokens and generation has only its screen figures: the report
    holds those and claims.md; a stage that ran but lost a figure is an error naming it."""
    from harmmed.review.bundle import STAGE_FIGURES, BundleError, write_report

    (tmp_path / "claims.md").write_text("| statistic |\n", encoding="utf-8")
    for stem in STAGE_FIGURES["screen"]:
        (tmp_path / f"{stem}.png").write_bytes(b"png")
    html = write_report(tmp_path, "plant", ["screen"]).read_text(encoding="utf-8")
    assert all(f"<h2>{stem}</h2>" in html for stem in STAGE_FIGURES["screen"]) and "layer_curves" not in html
    (tmp_path / "screen_heatmap.png").unlink()
    with pytest.raises(BundleError, match="screen_heatmap.png was not regenerated"):
        write_report(tmp_path, "plant", ["screen"])


def test_make_verify_never_rewrites_the_record_it_checks(verified_run, tmp_path):
    """make verify runs only the verify rules: a table edited after the run fails on its digest,
    and provenance.json is not recomputed over the edit."""
    workdir, config = verified_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)  # with .snakemake: the run's metadata
    results = copy / "results" / "tiny"
    record = (results / "provenance.json").read_bytes()
    lines = (results / "layer.csv").read_text().splitlines(keepends=True)
    cells = lines[-1].rstrip("\n").split(",")
    cells[-2] = f"{float(cells[-2]) + 0.5:.9g}"  # y_patched of the last row, likely never sampled
    lines[-1] = ",".join(cells) + "\n"
    (results / "layer.csv").write_text("".join(lines))
    done = snakemake(copy, config, "--allowed-rules", "verify", "verify_all", "--", "verify_all")
    assert done.returncode != 0
    assert "sha256 results/layer.csv" in (copy / "logs" / "verify" / "tiny.log").read_text()
    assert (results / "provenance.json").read_bytes() == record


def test_verify_warns_on_a_foreign_commit_and_fails_on_an_edited_config(verified_run, tmp_path, monkeypatch):
    from harmmed.review.verify import VerificationFailed

    workdir, config = verified_run
    results = _copy(workdir, tmp_path, monkeypatch) / "results" / "tiny"
    record = json.loads((results / "provenance.json").read_text())
    record["git"]["commit"] = "0123456789abcdef0123456789abcdef01234567"
    record["versions"]["torch"] = "0.0.1"
    (results / "provenance.json").write_text(json.dumps(record))
    _verify(config)  # the results still match their digests: warnings only
    report = Path("verification.md").read_text()
    assert "| recorded commit | WARN | 0123456789abcdef0123456789abcdef01234567 is not in this repository's" in report
    assert "| package versions | WARN | torch 0.0.1 recorded," in report and "**PASS**" in report

    record["config"]["claims"]["thresholds"]["C3_gate_share"] = 0.1
    (results / "provenance.json").write_text(json.dumps(record))
    with pytest.raises(VerificationFailed, match="provenance config"):
        _verify(config)


def test_claim_unit_sets_are_restated_from_the_recorded_settings():
    """verify restates each C3 row's units from the ranking and claims.seed without the stage's
    code; they must be the sets the claims stage patched."""
    import numpy as np

    from harmmed.analyses.claim_patches import ClaimSettings, build_plan
    from harmmed.review.verify import RecordedSettings, claim_unit_set

    cfg = load_config(REPO / "config" / "config.yaml")
    d_mlp, n_layers = 512, 6  # k = ceil(0.01 x 512) = 6 units
    rng = np.random.default_rng(3)
    ranking = pd.DataFrame([dict(metric=metric, site="neuron", unit=unit, rank=rank)
                            for metric in ("harm", "refusal") for rank, unit in enumerate(rng.permutation(d_mlp))])
    plan = build_plan(ClaimSettings.from_config(cfg), {"n_layers": n_layers, "d_mlp": d_mlp}, ranking)
    settings = RecordedSettings.from_config(cfg)
    k = len(plan.random[0])
    for metric, top in plan.top.items():
        row = {"role": "c3_topk", "metric": metric, "units": str(k), "draw": ""}
        assert claim_unit_set(settings, ranking, d_mlp, row) == top
    for draw, chosen in enumerate(plan.random):
        row = {"role": "c3_random", "metric": "refusal", "units": str(k), "draw": str(draw)}
        assert claim_unit_set(settings, ranking, d_mlp, row) == chosen
    assert claim_unit_set(settings, ranking, d_mlp, {"role": "c3_layer", "units": "", "draw": ""}) is None
    assert k == 6 and len(set(plan.random)) == len(plan.random) > 1 and plan.top["harm"] != plan.top["refusal"]
