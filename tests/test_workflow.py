"""The Snakemake workflow end to end on a tiny local model, and a dry run of the default config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny import TINY_CATEGORIES, save_tiny_model, write_tiny_pairs

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
ROW_COLUMNS = ["pair_id", "metric", "kind", "site", "layer", "window", "positions",
               "y_benign", "y_harmful", "y_patched", "effect"]


PLANT_SKIPS = ["figures", "mediate_layer", "mediate_token", "generate", "screen", "gating"]


def tiny_config(workdir: Path) -> Path:
    save_tiny_model(workdir / "tiny-model")
    write_tiny_pairs(workdir / "pairs.csv")
    config = {
        "models": [{"name": "tiny", "source": "local", "path": str(workdir / "tiny-model")},
                   # the same weights, scored on refusal alone and run as a plant is run
                   {"name": "tiny-refusal", "source": "local", "path": str(workdir / "tiny-model"),
                    "scored_metrics": ["refusal"], "skip_stages": PLANT_SKIPS}],
        "prompts": {"pairs_file": str(workdir / "pairs.csv"), "categories": TINY_CATEGORIES},
        "metrics": {"refusal_phrases": ["Sorry", "I cannot"]},
        "mediation": {"max_pairs": 4, "windows": [1, 3], "heatmap": {"n_pairs": 1}},
        "neuron": {"block_size": 16, "random_draws": 10},
        "gating": {"top_k": 4, "random_draws": 20},
        "screen": {"top_k": 3, "random_sample": 3, "held_out": {"k": [2, 8], "block_size": 4}},
        "generation": {"max_new_tokens": 4, "max_prompts": 2},
        "probe": {"folds": 2},
        "effects": {"bootstrap_samples": 200},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(config),
                           "--cores", "1", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    config = tiny_config(workdir)
    done = snakemake(workdir, config)
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir, config


def test_results_have_the_stated_schemas(tiny_run):
    workdir, _ = tiny_run
    results = workdir / "results" / "tiny"
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["architecture"] == "llama" and manifest["n_layers"] == 4 and manifest["refusal_token_ids"]
    inputs = [json.loads(line) for line in (results / "inputs.jsonl").read_text().splitlines()]
    assert set(inputs[0]) == {"pair_id", "split", "category", "harmful_ids", "benign_ids", "target_ids",
                              "post_positions"}
    for name in ("layer.csv", "module.csv", "heatmap.csv"):
        frame = pd.read_csv(results / name, dtype={"positions": str})
        assert list(frame.columns) == ROW_COLUMNS
        assert (frame["effect"] - (frame["y_patched"] - frame["y_benign"])).abs().max() < 1e-6
    layer = pd.read_csv(results / "layer.csv", dtype={"positions": str})
    assert set(layer["positions"]) == {"all", "post", "last"}
    assert layer["pair_id"].nunique() == 4
    assert len(layer) == 4 * 2 * 2 * 5 * 3  # pairs x metrics x kinds x layers(-1..3) x position sets
    heatmap = pd.read_csv(results / "heatmap.csv", dtype={"positions": str})
    assert heatmap["positions"].str.isdigit().all() and set(heatmap["site"]) == {"residual", "mlp", "attn"}
    module = pd.read_csv(results / "module.csv", dtype={"positions": str})
    assert set(module["site"]) == {"attn", "mlp"} and set(module["window"]) == {1, 3}
    claims = pd.read_csv(results / "claims.csv")
    assert list(claims.columns) == ["claim", "statistic", "value", "ci_low", "ci_high", "threshold", "verdict",
                                    "n_pairs", "n_excluded"]
    assert {"B", "C1-route", "C1-origin", "C2-route", "C2-origin", "C3", "C4", "C4-causal"} == set(claims["claim"])
    calibration = pd.read_csv(workdir / "results" / "calibration.csv", keep_default_na=False)
    assert set(calibration["model"]) == {"tiny", "tiny-refusal"} and (calibration["expected"] == "").all()  # grey
    assert (workdir / "figures" / "calibration.png").stat().st_size > 1000
    summary = pd.read_csv(workdir / "results" / "summary.csv", keep_default_na=False)
    assert list(summary.columns) == ["model", "claim", "statistic", "value", "ci_low", "ci_high", "threshold",
                                     "verdict", "n_pairs", "calibration"]
    assert list(summary[summary["model"] == "tiny"]["statistic"]) == list(claims["statistic"])
    assert set(summary["model"]) == {"tiny", "tiny-refusal"}
    assert "| claim | statistic | tiny | tiny-refusal | calibration |" in (workdir / "figures" / "summary.md").read_text()
    for figure in ("layer_curves", "module_curves", "severed_paths", "heatmap_refusal", "sparsity", "gating",
                   "block_vs_sum", "neuron_distribution", "probe_accuracy", "token_heatmap_refusal", "generation_rates",
                   "screen_scatter", "screen_heatmap", "screen_sparsity", "screen_adjacency"):
        assert (workdir / "figures" / "tiny" / f"{figure}.png").stat().st_size > 1000


def test_screen_tables_agree_with_the_neuron_stage(tiny_run):
    """screen.csv has a row for every unit of every layer; its final-layer exact rows are the
    neuron stage's single-unit rows; the report and held-out tables have their schemas."""
    workdir, _ = tiny_run
    results = workdir / "results" / "tiny"
    screen = pd.read_csv(results / "screen.csv", dtype={"positions": str, "verified": str}, keep_default_na=False,
                         na_values={"exact": [""]})
    assert list(screen.columns) == ["pair_id", "metric", "layer", "unit", "positions", "estimate", "exact", "verified"]
    assert len(screen) == 2 * 2 * 3 * 4 * 48  # pairs x metrics x position sets x layers x units
    final = screen[(screen["layer"] == 3) & (screen["positions"] == "all") & (screen["verified"] != "")]
    assert final["pair_id"].nunique() == 1 and len(final) == 2 * 48
    neuron = pd.read_csv(results / "neuron.csv", dtype={"positions": str, "block": str, "neuron": str},
                         keep_default_na=False)
    singles = neuron[(neuron["site"] == "neuron") & (neuron["layer"] == 3) & (neuron["block"] == "")]
    merged = final.merge(singles.assign(unit=singles["neuron"].astype(int)), on=["pair_id", "metric", "unit"])
    assert len(merged) == len(final)
    assert (merged["exact"] - merged["effect"]).abs().max() < 1e-6
    report = pd.read_csv(results / "screen_report.csv", dtype={"positions": str})
    assert len(report) == 2 * 2 * 3 * 4 and report["spearman"].notna().sum() > 0
    heldout = pd.read_csv(results / "screen_heldout.csv", dtype={"positions": str, "units": str})
    assert set(heldout["selection"]) == {"top", "block", "random", "layer"} and set(heldout["layer"]) == {0, 1, 2, 3}


def test_a_model_scored_on_refusal_alone_has_the_refusal_rows_of_both(tiny_run):
    """`scored_metrics: [refusal]` leaves out every harm row and changes no refusal row: the
    module, neuron, ranking and claim-patch tables of the same weights agree row for row. The
    sparsity curve feeds only the figures, which this model skips: it has none."""
    workdir, _ = tiny_run
    both, alone = workdir / "results" / "tiny", workdir / "results" / "tiny-refusal"
    for name, keys in (("module.csv", ["kind", "site", "layer", "window", "positions"]),
                       ("neuron.csv", ["kind", "site", "layer", "positions", "block", "neuron"]),
                       ("claim_patches.csv", ["role", "kind", "site", "layers", "positions", "units"])):
        full = pd.read_csv(both / name, dtype=str, keep_default_na=False)
        refusal = pd.read_csv(alone / name, dtype=str, keep_default_na=False)
        assert set(full["metric"]) == {"harm", "refusal"} and set(refusal["metric"]) == {"refusal"}, name
        expected = full[full["metric"] == "refusal"].reset_index(drop=True)
        assert len(refusal) == len(expected) > 0, name
        assert (refusal[["pair_id", *keys]] == expected[["pair_id", *keys]]).all().all(), name
        for column in ("y_patched", "effect"):
            gap = (refusal[column].astype(float) - expected[column].astype(float)).abs().max()
            assert gap < 1e-5, (name, column, gap)
    assert (both / "sparsity.csv").exists() and not (alone / "sparsity.csv").exists()
    ranking = pd.read_csv(both / "neuron_ranking.csv")
    merged = pd.read_csv(alone / "neuron_ranking.csv").merge(ranking, on=["metric", "site", "unit"])
    assert set(merged["metric"]) == {"refusal"} and len(merged) == (ranking["metric"] == "refusal").sum()
    assert (merged["oriented_nie_x"] - merged["oriented_nie_y"]).abs().max() < 1e-5
    claims = pd.read_csv(alone / "claims.csv")
    assert not claims["statistic"].str.contains(r"\[harm\]").any()
    assert claims["statistic"].str.contains(r"\[refusal\]").sum() >= 7


def test_second_run_has_nothing_to_do(tiny_run):
    workdir, config = tiny_run
    again = snakemake(workdir, config, "--dry-run")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def planned_jobs(workdir: Path, config: Path) -> set[str]:
    """The rules a dry run would run (Snakemake's default rerun triggers: files, params, code)."""
    done = snakemake(workdir, config, "--dry-run")
    assert done.returncode == 0, done.stderr[-4000:]
    text = done.stdout + done.stderr
    if "Nothing to be done" in text:
        return set()
    table = text.split("job ", 1)[1].split("total", 1)[0]
    return {line.split()[0] for line in table.splitlines()[2:] if line.strip()}


def changed_config(workdir: Path, config: Path, name: str, edit) -> Path:
    """A copy of the tiny config with ``edit`` applied, beside it."""
    settings = yaml.safe_load(config.read_text(encoding="utf-8"))
    edit(settings)
    path = workdir / f"config-{name}.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


MODEL_STAGES = {"mediate_layer", "mediate_module", "mediate_heatmap", "mediate_neuron", "mediate_token", "probe",
                "screen_units", "gating", "neuron_sparsity", "mediate_claims", "generate_and_judge"}


def test_a_changed_setting_reruns_what_reads_it_and_nothing_else(tiny_run):
    workdir, config = tiny_run

    def windows(cfg):
        cfg["mediation"]["windows"] = [1]

    def threshold(cfg):
        cfg.setdefault("claims", {}).setdefault("thresholds", {})["C3_gate_share"] = 0.4

    def ci(cfg):
        cfg["effects"]["ci"] = 0.9

    planned = planned_jobs(workdir, changed_config(workdir, config, "windows", windows))
    assert "mediate_module" in planned  # and what is drawn from it; no claim reads the module sweep
    assert not planned & {"download_model", "prepare_prompts", "mediate_layer", "mediate_neuron", "probe",
                          "screen_units", "mediate_token", "gating", "mediate_claims", "claims"}
    planned = planned_jobs(workdir, changed_config(workdir, config, "threshold", threshold))
    assert planned == {"claims", "calibration", "provenance", "summary", "all"}
    def scored(cfg):
        cfg["models"][1]["scored_metrics"] = ["harm", "refusal"]

    def spelled_out(cfg):  # the default, written out: no stage reruns
        cfg["models"][0]["scored_metrics"] = ["refusal", "harm"]

    planned = planned_jobs(workdir, changed_config(workdir, config, "scored", scored))
    assert {"mediate_module", "mediate_neuron", "mediate_claims"} <= planned  # the analyses, not the weights
    assert not planned & {"download_model", "prepare_prompts", "probe"}
    # only the provenance record (it hashes the whole config) and what lists it
    assert planned_jobs(workdir, changed_config(workdir, config, "spelled-out", spelled_out)) == {
        "provenance", "summary", "all"}
    planned = planned_jobs(workdir, changed_config(workdir, config, "ci", ci))
    assert {"claims", "figures", "neuron_figures", "generate_and_judge"} <= planned
    assert not planned & (MODEL_STAGES - {"generate_and_judge"})


def test_a_changed_model_or_pairs_file_reruns_what_came_from_it(tiny_run):
    workdir, config = tiny_run
    shutil.copytree(workdir / "tiny-model", workdir / "other-model", dirs_exist_ok=True)
    shutil.copyfile(workdir / "pairs.csv", workdir / "other-pairs.csv")

    def model(cfg):
        cfg["models"][0]["path"] = str(workdir / "other-model")

    def pairs(cfg):
        cfg["prompts"]["pairs_file"] = str(workdir / "other-pairs.csv")

    planned = planned_jobs(workdir, changed_config(workdir, config, "model", model))
    assert {"download_model", "prepare_prompts"} | MODEL_STAGES <= planned
    planned = planned_jobs(workdir, changed_config(workdir, config, "pairs", pairs))
    assert {"prepare_prompts", "mediate_token"} | MODEL_STAGES <= planned and "download_model" not in planned


def test_rerun_is_byte_identical(tiny_run):
    workdir, config = tiny_run
    results = workdir / "results" / "tiny"
    names = ["inputs.jsonl", "layer.csv", "module.csv", "heatmap.csv", "severed.csv", "neuron.csv", "sparsity.csv", "gating.csv",
             "token.csv", "probe.csv", "generations.jsonl", "generation_rates.csv", "claim_patches.csv", "claims.csv",
             "screen.csv", "screen_report.csv", "screen_heldout.csv"]
    before = {n: (results / n).read_bytes() for n in names}
    figure = (workdir / "figures" / "tiny" / "layer_curves.png").read_bytes()
    done = snakemake(workdir, config, "--forcerun", "prepare_prompts")
    assert done.returncode == 0, done.stderr[-4000:]
    assert {n: (results / n).read_bytes() for n in names} == before
    assert (workdir / "figures" / "tiny" / "layer_curves.png").read_bytes() == figure


def test_report_has_captions(tiny_run):
    workdir, config = tiny_run
    done = snakemake(workdir, config, "--report", str(workdir / "report.html"))
    assert done.returncode == 0, done.stderr[-4000:]
    assert (workdir / "report.html").stat().st_size > 10_000


def test_default_config_dry_run():
    done = subprocess.run([*SNAKEMAKE, "--directory", str(REPO), "--cores", "2", "--dry-run", "--forceall"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    for rule in ("download_model", "prepare_prompts", "mediate_layer", "mediate_module", "mediate_heatmap",
                 "mediate_neuron", "gating",
                 "generate_and_judge", "mediate_token", "probe", "figures", "neuron_figures", "mediate_claims",
                 "claims", "calibration", "summary", "screen_units", "screen_figures", "finetune_model", "recovery",
                 "recovery_figure"):
        assert rule in done.stdout
    # skip_stages: the plants' module sweep and the base's recovery are not scheduled
    assert "results/smollm2-aligned/module.csv" in done.stdout and "results/plant-late-attn/module.csv" not in done.stdout
    assert "results/smollm2-aligned/recovery.csv" in done.stdout
    assert "results/smollm2-135m-instruct/recovery.csv" not in done.stdout


def test_bad_config_is_refused_before_any_job(tmp_path):
    config = tiny_config(tmp_path)
    bad = yaml.safe_load(config.read_text())
    bad["mediation"]["windows"] = [2]
    config.write_text(yaml.safe_dump(bad))
    done = snakemake(tmp_path, config, "--dry-run")
    assert done.returncode != 0 and "mediation.windows" in done.stdout + done.stderr
    assert str(config) in done.stdout + done.stderr  # the message names the file the key is in
    assert not (tmp_path / "results").exists()


def test_cross_model_figure_from_two_manifests(tiny_run, tmp_path):
    from harmmed.config import load_config
    from harmmed.stages import cross_model_figure

    workdir, config = tiny_run
    results = workdir / "results" / "tiny"
    other = json.loads((results / "manifest.json").read_text())
    other["name"] = "tiny-copy"
    (tmp_path / "manifest.json").write_text(json.dumps(other))
    out = tmp_path / "cross_model.png"
    cross_model_figure(load_config(config), [str(results / "manifest.json"), str(tmp_path / "manifest.json")],
                       [str(results / "layer.csv")] * 2, out)
    assert out.stat().st_size > 1000 and out.with_suffix(".pdf").exists()
