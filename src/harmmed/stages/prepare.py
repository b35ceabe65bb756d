"""Stages that make a model or its prompts: download, fine-tune, the public datasets, the chat-
templated inputs, and the judge."""

from __future__ import annotations

from pathlib import Path

from ..config import model_spec
from ..datasets.prompts import (
    DROPPED_COLUMNS,
    PAIR_COLUMNS,
    PromptFileError,
    check_categories,
    check_control_tokens,
    check_lengths,
    encode_pairs,
    read_pairs,
    select_pairs,
    split_pairs,
    write_inputs,
)
from ..io.storage import atomic_path, read_manifest, write_json, write_table
from .base import ManifestSource, log


# ---------------------------------------------------------------- download_model
def download_model(cfg: dict, name: str, models_dir: str | Path, manifest_path: str | Path) -> dict:
    from ..models.loading import fetch_model, open_model

    spec = model_spec(cfg, name)
    record = fetch_model(spec, Path(models_dir))
    model, tokenizer = open_model(record, spec["dtype"], "cpu", where="its fetch record", derived=False)
    manifest = {**record, **_describe_model(model, tokenizer, spec, cfg["metrics"]["refusal_phrases"])}
    write_json(manifest, manifest_path)
    return manifest


def _describe_model(model, tokenizer, spec: dict, phrases: list[str]) -> dict:
    """The manifest fields every model stage reads, whatever the model's source."""
    from ..models.checks import derived_fields

    return {**derived_fields(model, tokenizer, phrases), "dtype": spec["dtype"], "device": spec["device"],
            "refusal_phrases": phrases}


# ---------------------------------------------------------------- prepare_prompts
def prepare_prompts(cfg: dict, manifest: ManifestSource, pairs_file: str | Path, inputs_path: str | Path,
                    dropped_path: str | Path) -> tuple[int, int]:
    """Encode, check alignment, split. Returns (kept, dropped)."""
    from transformers import AutoTokenizer

    from ..models.checks import check_model_files

    prompts, manifest = cfg["prompts"], read_manifest(manifest)
    rows = read_pairs(pairs_file)
    if not prompts["public"]["enabled"]:  # the public sets' pairs are sampled by our code, categories and all
        check_categories(rows, prompts.get("categories"), pairs_file)  # absent from configs recorded before it
    check_model_files(manifest, weights=False)  # the tokenizer and chat template are the recorded ones
    tokenizer = AutoTokenizer.from_pretrained(manifest["path"])
    if not tokenizer.chat_template:
        raise PromptFileError(f"model {manifest['name']} ({manifest['path']}): its tokenizer has no chat template "
                              "(tokenizer_config.json or chat_template.jinja); prompts are encoded as chat turns, so "
                              "the analysis needs a chat model")
    check_control_tokens(rows, tokenizer, pairs_file)
    split_of = split_pairs(rows, prompts["discovery_fraction"], prompts["split_seed"])
    try:
        kept, dropped = encode_pairs(tokenizer, rows, prompts["mode"], split_of, cfg["noise"],
                                     request_span=prompts["public"]["enabled"])
    except ValueError as err:
        raise PromptFileError(f"{pairs_file}: {err} (under {manifest['name']}'s chat template)") from None
    check_lengths(kept, rows, manifest.get("max_positions"), pairs_file, manifest["name"])
    log.info("prompt pairs: %d read, %d kept, %d dropped (not token-aligned or identical ids) under %s",
             len(rows), len(kept), len(dropped), manifest["name"])
    if not kept:
        raise ValueError(f"{pairs_file}: no pair is token-aligned under {manifest['name']}'s tokenizer")
    with atomic_path(inputs_path) as tmp:
        write_inputs(kept, tmp)
    write_table(dropped, DROPPED_COLUMNS, dropped_path)
    return len(kept), len(dropped)


# ---------------------------------------------------------------- fetch_public_datasets
def fetch_public_datasets(cfg: dict, raw_dir: str | Path, pairs_csv: str | Path) -> int:
    """Download the opted-in public sets (sha256-locked) and sample unpaired pairs from them."""
    from ..datasets.public_datasets import build_unpaired_pairs, fetch_sources, load_prompts

    public = cfg["prompts"]["public"]
    names = public["harmful"] + public["benign"]
    paths = fetch_sources(names, Path(raw_dir), Path(public["lock_file"]), public["url_overrides"],
                          public["local_files"], public["pin_new"])
    harmful = [p for name in public["harmful"] for p in load_prompts(name, paths[name])]
    benign = [p for name in public["benign"] for p in load_prompts(name, paths[name])]
    pairs = build_unpaired_pairs(harmful, benign, public["n_pairs"], public["seed"])
    write_table(pairs, [*PAIR_COLUMNS, "harmful_target_source"], pairs_csv)
    log.info("unpaired pairs: %d sampled from %s", len(pairs), ", ".join(names))
    return len(pairs)


# ---------------------------------------------------------------- generation stages

def download_judge(cfg: dict, models_dir: str | Path, manifest_path: str | Path) -> dict:
    """Fetch the model judge's weights once (verified, safetensors) and record which bytes."""
    from ..models.loading import fetch_model

    judge = cfg["generation"]["judge"]
    if judge["kind"] != "model" or not judge.get("model"):
        raise ValueError("download_judge: generation.judge.kind must be 'model' with a model spec")
    record = {**fetch_model(judge["model"], Path(models_dir)), "kind": "model"}
    write_json(record, manifest_path)
    return record


# ---------------------------------------------------------------- finetune_model and recovery
def finetune_model(cfg: dict, name: str, base_manifest: ManifestSource, models_dir: str | Path,
                   manifest_path: str | Path, threads: int = 1) -> dict:
    """Train a copy of the base's chosen components to refuse, save it as safetensors, check its
    behaviour on held-out pairs and write its manifest. A model failing the check is never
    silently used: with ``finetune.on_failure: error`` the stage fails (the record is kept in
    ``<manifest>.failed.json``); with ``mark`` the manifest says ``behaviour.passed: false``."""
    from ..models.checks import model_file_digests
    from ..models.loading import safetensors_digest
    from ..training import finetune
    from ..training.behaviour import BehaviourCheckError, behaviour_check, describe_failure

    spec, settings = model_spec(cfg, name), cfg["finetune"]
    index = [m["name"] for m in cfg["models"]].index(name)
    base = read_manifest(base_manifest)
    trained = finetune.fine_tune(spec, base, f"models[{index}]", threads)
    out_dir = finetune.save_model(trained.model, trained.tokenizer, Path(models_dir) / name / "hf")
    manifest = {"name": name, "source": "finetune", "path": str(out_dir), "revision": None,
                "sha256": safetensors_digest(out_dir), "files": model_file_digests(out_dir),
                **_describe_model(trained.model, trained.tokenizer, spec, cfg["metrics"]["refusal_phrases"]),
                **trained.record(spec, base)}
    prompts = cfg["prompts"]
    rows = read_pairs(prompts["pairs_file"])
    # The check reads whole prompts, never a corrupted run: noise mode's pairs are scored as unpaired.
    mode = "unpaired" if prompts["mode"] == "noise" else prompts["mode"]
    pairs, _ = encode_pairs(trained.tokenizer, rows, mode,
                            split_pairs(rows, prompts["discovery_fraction"], prompts["split_seed"]))
    manifest["behaviour"] = behaviour_check(
        trained.model, trained.tokenizer, select_pairs(pairs, settings["check_split"], settings["max_pairs"]),
        manifest["refusal_token_ids"], cfg["generation"]["judge"]["phrases"], settings["max_new_tokens"],
        settings["thresholds"])
    log.info("%s behaviour: %s", name, {k: v for k, v in manifest["behaviour"].items() if k != "pair_ids"})
    if not manifest["behaviour"]["passed"] and settings["on_failure"] == "error":
        write_json(manifest, f"{manifest_path}.failed.json")
        raise BehaviourCheckError(describe_failure(name, manifest["behaviour"]))
    write_json(manifest, manifest_path)
    return manifest
