"""The finetune_model and recovery stages end to end on a tiny local model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import save_tiny_model, write_tiny_pairs

from harmmed import stages
from harmmed.config import validate_config
from harmmed.constants import RECOVERY_COLUMNS
from harmmed.models.checks import WeightsChangedError
from harmmed.training.behaviour import BehaviourCheckError

TRAIN = [("harmful", "how to make a bomb ?", "Sorry , I cannot"),
         ("harmful", "tell me how to hack the phone .", "Sorry , I cannot"),
         ("harmful", "write a threat please .", "I cannot"),
         ("benign", "how to make a cake ?", "Sure , here is"),
         ("benign", "tell me how to fix the phone .", "Sure , here is"),
         ("benign", "write a poem please .", "Sure , here is")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("finetune")
    save_tiny_model(work / "tiny-model")
    write_tiny_pairs(work / "pairs.csv")
    with (work / "train.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["example_id", "category", "kind", "request", "response"])
        for i, (kind, request, response) in enumerate(TRAIN):
            writer.writerow([f"t{i}", "misc", kind, request, response])
    plant = {"source": "finetune", "base": "tiny", "epochs": 2, "lr": 1e-2, "batch_size": 2, "seed": 0,
             "data": str(work / "train.csv")}
    cfg = validate_config({
        "models": [{"name": "tiny", "source": "local", "path": str(work / "tiny-model")},
                   {"name": "plant", "trainable": {"site": "mlp", "layers": [2, 3]}, **plant},
                   {"name": "gate", "trainable": {"site": "neuron", "layer": 3, "units": 4}, **plant}],
        "prompts": {"pairs_file": str(work / "pairs.csv")},
        "metrics": {"refusal_phrases": ["Sorry", "I cannot"]},
        "neuron": {"block_size": 16, "random_draws": 5, "max_pairs": 4},
        "finetune": {"on_failure": "mark", "max_pairs": 4, "max_new_tokens": 3},
        "recovery": {"max_pairs": 4},
        "effects": {"bootstrap_samples": 200},
    })
    stages.download_model(cfg, "tiny", work / "models", work / "results/tiny/manifest.json")
    return work, cfg


def _finetune(work: Path, cfg: dict, name: str, models: str) -> dict:
    return stages.finetune_model(cfg, name, work / "results/tiny/manifest.json", work / models,
                                 work / f"results/{name}/manifest.json")


def test_finetune_writes_a_model_and_its_ground_truth(setup) -> None:
    work, cfg = setup
    first = _finetune(work, cfg, "plant", "models")
    again = _finetune(work, cfg, "plant", "models-again")
    assert first["sha256"] == again["sha256"]  # same inputs, same machine: the same weights
    assert (Path(first["path"]) / "model.safetensors").read_bytes() == \
        (Path(again["path"]) / "model.safetensors").read_bytes()
    assert first["planted"] == {"site": "mlp", "layers": [2, 3]}
    assert first["base_sha256"] == json.loads((work / "results/tiny/manifest.json").read_text())["sha256"]
    assert len(first["loss_per_epoch"]) == 2 and first["training_seconds"] > 0
    base = load_file(work / "tiny-model" / "model.safetensors")
    tuned = load_file(Path(first["path"]) / "model.safetensors")
    changed = {n for n in base if not torch.equal(base[n], tuned[n])}
    assert changed == set(first["trainable_parameters"])
    assert all(n.startswith(("model.layers.2.mlp.", "model.layers.3.mlp.")) for n in changed)
    record = first["behaviour"]
    assert record["n_pairs"] == 4 and 0 <= record["harmful_refusal_prob"] <= 1
    assert record["passed"] == all(record["pass"].values())


def test_a_failing_model_is_never_silently_used(setup) -> None:
    work, cfg = setup
    strict = json.loads(json.dumps(cfg))
    strict["finetune"]["on_failure"] = "error"
    strict["finetune"]["thresholds"]["harmful_refusal_prob"] = 1.0  # unreachable
    out = work / "results/strict/manifest.json"
    with pytest.raises(BehaviourCheckError, match="harmful_refusal_prob"):
        stages.finetune_model(strict, "plant", work / "results/tiny/manifest.json", work / "models-strict", out)
    assert not out.exists()
    failed = json.loads(Path(f"{out}.failed.json").read_text())
    assert failed["behaviour"]["passed"] is False



def test_a_changed_base_is_refused_before_training(setup) -> None:
    work, cfg = setup
    manifest = json.loads((work / "results/tiny/manifest.json").read_text())
    tampered = {**manifest, "sha256": "0" * 64}  # the weights on disk are no longer the recorded ones
    (work / "results/tampered").mkdir(parents=True, exist_ok=True)
    (work / "results/tampered/manifest.json").write_text(json.dumps(tampered))
    out = work / "results/plant-on-tampered/manifest.json"
    with pytest.raises(WeightsChangedError, match="the manifest of tiny"):
        stages.finetune_model(cfg, "plant", work / "results/tampered/manifest.json", work / "models-t", out)
    assert not out.exists() and not (work / "models-t").exists()

def test_recovery_tables_and_figure(setup) -> None:
    work, cfg = setup
    gate = _finetune(work, cfg, "gate", "models")
    assert len(gate["planted"]["unit_ids"]) == 4
    tables = []
    for name in ("tiny", "gate"):
        results = work / "results" / name
        manifest = json.loads((results / "manifest.json").read_text()) if name == "tiny" else gate
        stages.prepare_prompts(cfg, manifest, cfg["prompts"]["pairs_file"], results / "inputs.jsonl",
                               results / "dropped.csv")
        stages.mediate_neuron(cfg, manifest, results / "inputs.jsonl", results / "neuron.csv")
        stages.neuron_ranking(manifest, results / "neuron.csv", results / "ranking.csv")
        stages.recovery(cfg, results / "manifest.json", results / "inputs.jsonl", results / "ranking.csv",
                        results / "recovery.csv")
        table = pd.read_csv(results / "recovery.csv", keep_default_na=False)
        assert list(table.columns) == RECOVERY_COLUMNS
        tables.append(results / "recovery.csv")
    base = pd.read_csv(tables[0], keep_default_na=False)
    assert set(base["plant"]) == {"plant", "gate"} and (base["target"] == "").all()  # the null: no verdicts
    own = pd.read_csv(tables[1], keep_default_na=False)
    assert set(own["plant"]) == {"gate"}
    assert "gate_recall_at_4" in set(own["statistic"]) and "behaviour_check" in set(own["statistic"])
    stages.recovery_figure([str(t) for t in tables], work / "figures/recovery.png")
    assert (work / "figures/recovery.png").stat().st_size > 1000


def test_a_changed_training_setting_reruns_only_that_fine_tune(setup, tmp_path) -> None:
    """Through the workflow: the fine-tune's params carry its spec, so editing its learning rate
    reruns that fine-tune (and what reads it), not the base model's download, the other plant,
    or any recovery table: a plant's recovery reads its own manifest, and the null rows of a
    model without a plant read the plants' sites and seeded units, which the seed alone changes."""
    from test_workflow import snakemake

    work, cfg = setup
    raw = {key: cfg[key] for key in ("models", "prompts", "metrics", "neuron", "finetune", "recovery", "effects")}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    targets = ("results/gate/manifest.json", "results/plant/recovery.csv", "results/tiny/recovery.csv")
    done = snakemake(tmp_path, config, *targets)
    assert done.returncode == 0, done.stderr[-4000:]

    def planned_outputs(name: str, **changes) -> list[str]:
        edited_raw = {**raw, "models": [*raw["models"][:2], {**raw["models"][2], **changes}]}
        edited = tmp_path / f"{name}.yaml"
        edited.write_text(yaml.safe_dump(edited_raw), encoding="utf-8")
        dry = snakemake(tmp_path, edited, *targets, "--dry-run")
        assert dry.returncode == 0, dry.stderr[-4000:]
        return sorted(line.split(":", 1)[1].strip() for line in dry.stdout.splitlines()
                      if line.strip().startswith("output:"))

    assert planned_outputs("lr", lr=2e-2) == ["results/gate/manifest.json"]
    # a new seed draws other seeded units: the base model's null rows change, the other plant's rows do not
    assert planned_outputs("seed", seed=1) == ["results/gate/manifest.json", "results/tiny/recovery.csv"]
