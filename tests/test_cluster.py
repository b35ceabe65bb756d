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
    assert set(profile["default-resources"]) == {"runtime", "mem_mb"}  # no partition, no account
    assert "set-resources" not in profile  # nothing for a command-line --set-resources to replace


def test_slurm_profile_settings_reach_the_resources():
    profile = render_slurm_profile(PARTITION="short", ACCOUNT="lab", CPUS="16")
    assert profile["default-resources"]["slurm_partition"] == "short"
    assert profile["default-resources"]["slurm_account"] == "lab"
    assert profile["max-threads"] == 16


def dry_run(env: dict, *args: str, cores: int = 2) -> str:
    """The printed plan of a dry run of the default config."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HARMMED_SLURM_")}, **env,
           "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(REPO),
                           "-n", "--forceall", "--cores", str(cores), *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def dry_run_resources(env: dict, *args: str) -> dict[str, str]:
    """Rule name -> its resources line in a dry run of the default config."""
    import re

    return dict(re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", dry_run(env, *args), re.M))


@pytest.mark.parametrize(("cores", "threads"), [(2, 1), (4, 2), (16, 4)])
def test_on_one_machine_a_model_job_takes_half_the_cores(cores, threads):
    """Two model jobs share one machine (at most MODEL_THREADS each); a dry run prints no
    threads line for a 1-thread job. The fine-tune's weights depend on it: its manifest records it."""
    import re

    plan = dry_run({}, cores=cores)
    for rule in ("mediate_layer", "finetune_model", "probe"):
        jobs = re.findall(rf"^rule {rule}:\n((?:    .*\n)*)", plan, re.M)
        assert jobs, rule
        for body in jobs:
            found = re.search(r"^    threads: (\d+)$", body, re.M)
            assert (int(found.group(1)) if found else 1) == threads, (rule, cores, body)


def test_model_job_settings_survive_a_command_line_set_resources():
    """Snakemake replaces a profile's whole set-resources with the command line's; the model
    jobs' GPU, partition and runtime are rule resources instead, so they stay."""
    resources = dry_run_resources({"HARMMED_SLURM_GPUS": "1", "HARMMED_SLURM_GPU_PARTITION": "gpu"},
                                  "--profile", str(REPO / "profiles" / "slurm"), "--executor", "local",
                                  "--set-resources", "mediate_layer:runtime=5")
    assert "runtime=5, gpu=1, slurm_partition=gpu" in resources["mediate_layer"]
    assert "runtime=720, gpu=1, slurm_partition=gpu" in resources["mediate_module"]
    assert "gpu" not in resources["claims"] and "runtime=60" in resources["claims"]


def test_model_rules_ask_for_their_threads_memory_and_gpus():
    """Every rule that loads the model gets MODEL_THREADS CPUs, memory from the model's size and
    the model-job settings, and is listed in profiles/gpu-local."""
    import re

    model_rules = set()
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", path.read_text(), re.M | re.S):
            if "envs/mediate.yaml" in body:
                model_rules.add(name)
                assert "threads: MODEL_THREADS" in body, name
                # memory from the model's size, checked against the nodes (training asks for more)
                assert f'mem_mb=model_job_mem_mb("{name}")' in body or f'_checked("{name}", threads,' in body, name
                assert "gpu=MODEL_GPUS" in body and "slurm_partition=MODEL_PARTITION" in body, name
    assert {"mediate_layer", "mediate_heatmap", "neuron_sparsity", "generate_and_judge"} <= model_rules
    listed = yaml.safe_load((REPO / "profiles" / "gpu-local" / "config.yaml").read_text())["set-resources"]
    assert model_rules <= set(listed), f"profiles/gpu-local: no GPU for {sorted(model_rules - set(listed))}"
