"""Cluster resources: the fit check against SLURM nodes, memory requests, and profiles/slurm's
settings (the live SLURM run is `make test-cluster`, tests/cluster/test_cluster.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harmmed.cluster import BASE_MEM_MB, JobNeverFits, Node, check_fits, model_mem_mb, parse_sinfo, weights_mb

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"


def test_parse_sinfo_reads_cpus_memory_and_gpus():
    text = "n1|2|21694|(null)\nn2|64|515000|gpu:a100:4(S:0-1)\nn3|32+|256000|gpu:2,shard:8\n\n"
    assert parse_sinfo(text) == [Node("n1", 2, 21694, 0), Node("n2", 64, 515000, 4), Node("n3", 32, 256000, 2)]


def test_a_job_larger_than_every_node_is_refused_with_the_setting_to_change():
    nodes = [Node("small", 2, 20000, 0), Node("big", 8, 8000, 0)]
    check_fits("mediate_layer", 2, 20000, 0, nodes)
    check_fits("mediate_layer", 8, 8000, 0, nodes)
    with pytest.raises(JobNeverFits, match=r"rule mediate_layer: asks for 8 CPUs, 20000 MB.*HARMMED_SLURM_CPUS"):
        check_fits("mediate_layer", 8, 20000, 0, nodes)  # each fits some node, both at once none
    with pytest.raises(JobNeverFits, match=r"16 CPUs.*8 CPUs / 8000 MB.*HARMMED_SLURM_CPUS"):
        check_fits("probe", 16, 1000, 0, nodes)
    with pytest.raises(JobNeverFits, match="HARMMED_SLURM_GPUS=0"):
        check_fits("probe", 1, 1000, 1, nodes)
    with pytest.raises(JobNeverFits, match="mediate_layer:mem_mb"):
        check_fits("mediate_layer", 1, 64000, 0, nodes)


def test_model_memory_is_three_copies_of_the_weights(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"\0" * (5 * 2**20 + 1))
    (tmp_path / "model" / "config.json").write_text("{}")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"path": str(tmp_path / "model")}))
    assert weights_mb(tmp_path / "model") == 6
    assert model_mem_mb(manifest) == 3 * 6 + BASE_MEM_MB


def render_slurm_profile(**settings: str) -> dict:
    """profiles/slurm/config.yaml as Snakemake reads it (YTE), under the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARMMED_SLURM_")}
    env.update({f"HARMMED_SLURM_{k}": v for k, v in settings.items()})
    done = subprocess.run([sys.executable, "-c", "import json, sys, yte; print(json.dumps(yte.process_yaml("
                           "open(sys.argv[1]), require_use_yte=True)))", str(SLURM_PROFILE)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def test_slurm_profile_names_no_cluster_by_default():
    profile = render_slurm_profile()
    assert profile["executor"] == "slurm" and profile["max-threads"] == 4
    assert "slurm_partition" not in profile["default-resources"]
    assert "slurm_account" not in profile["default-resources"]
    for rule, resources in profile["set-resources"].items():
        assert set(resources) == {"runtime"}, rule  # no partition, no GPU, no memory


def test_slurm_profile_settings_reach_the_resources():
    profile = render_slurm_profile(PARTITION="short", GPU_PARTITION="gpu", ACCOUNT="lab", GPUS="1", CPUS="16")
    assert profile["default-resources"]["slurm_partition"] == "short"
    assert profile["default-resources"]["slurm_account"] == "lab"
    assert profile["max-threads"] == 16
    assert profile["set-resources"]["mediate_layer"] == {"runtime": 720, "slurm_partition": "gpu", "gpu": 1}


def test_model_rules_ask_for_their_threads_and_the_models_memory():
    """Every rule that loads the model gets MODEL_THREADS CPUs and a memory request from the
    model's size, and is listed in both GPU profiles."""
    import re

    model_rules = set()
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", path.read_text(), re.M | re.S):
            if "envs/mediate.yaml" in body:
                model_rules.add(name)
                assert "threads: MODEL_THREADS" in body, name
                assert f'mem_mb=model_job_mem_mb("{name}")' in body, name
    assert {"mediate_layer", "mediate_heatmap", "generate_and_judge"} <= model_rules
    assert model_rules <= set(render_slurm_profile(GPUS="1")["set-resources"])
    listed = yaml.safe_load((REPO / "profiles" / "gpu-local" / "config.yaml").read_text())["set-resources"]
    assert model_rules <= set(listed), f"profiles/gpu-local: no GPU for {sorted(model_rules - set(listed))}"
