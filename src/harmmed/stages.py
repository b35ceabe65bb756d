"""One function per workflow stage: read inputs, call the library, write outputs.

The Snakemake scripts are thin wrappers around these, so every stage can also be run (and
tested) from Python without Snakemake.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from . import mediation
from .arch import resolve_sites
from .engine import MediationEngine
from .metrics import refusal_token_ids
from .models import fetch_model, load_model
from .prompts import EncodedPair, encode_pairs, read_inputs, read_pairs, select_pairs, split_pairs, write_inputs

log = logging.getLogger("harmmed")


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path that replaces ``path`` only if the block succeeds: no half-written
    outputs survive a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(obj: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def model_spec(cfg: dict, name: str) -> dict:
    for spec in cfg["models"]:
        if spec["name"] == name:
            return spec
    raise KeyError(f"models: no model named {name!r}")


# ---------------------------------------------------------------- download_model
def download_model(cfg: dict, name: str, models_dir: str | Path, manifest_path: str | Path) -> dict:
    spec = model_spec(cfg, name)
    record = fetch_model(spec, Path(models_dir))
    model, tokenizer = load_model(record["path"], spec["dtype"], "cpu", spec.get("trust_remote_code", False))
    sites = resolve_sites(model)
    phrases = cfg["metrics"]["refusal_phrases"]
    refusal_ids = refusal_token_ids(tokenizer, phrases)
    manifest = {
        **record,
        "architecture": model.config.model_type,
        "n_layers": sites.n_layers,
        "d_model": sites.d_model,
        "d_mlp": sites.d_mlp,
        "vocab_size": model.get_output_embeddings().weight.shape[0],
        "dtype": spec["dtype"],
        "device": spec["device"],
        "chat_template": tokenizer.chat_template,
        "refusal_phrases": phrases,
        "refusal_token_ids": refusal_ids,
        "refusal_tokens": [tokenizer.convert_ids_to_tokens(i) for i in refusal_ids],
    }
    write_json(manifest, manifest_path)
    return manifest


def load_for_stage(cfg: dict, manifest: dict, threads: int):
    torch.set_num_threads(max(1, threads))
    spec = model_spec(cfg, manifest["name"])
    return load_model(manifest["path"], spec["dtype"], spec["device"], spec.get("trust_remote_code", False))


# ---------------------------------------------------------------- prepare_prompts
def prepare_prompts(cfg: dict, manifest: dict, pairs_file: str | Path, inputs_path: str | Path,
                    dropped_path: str | Path) -> tuple[int, int]:
    """Encode, check alignment, split. Returns (kept, dropped)."""
    from transformers import AutoTokenizer

    prompts = cfg["prompts"]
    rows = read_pairs(pairs_file)
    tokenizer = AutoTokenizer.from_pretrained(manifest["path"])
    split_of = split_pairs(rows, prompts["discovery_fraction"], prompts["split_seed"])
    kept, dropped = encode_pairs(tokenizer, rows, prompts["mode"], split_of)
    log.info("prompt pairs: %d read, %d kept, %d dropped as not token-aligned under %s",
             len(rows), len(kept), len(dropped), manifest["name"])
    if not kept:
        raise ValueError(f"{pairs_file}: no pair is token-aligned under {manifest['name']}'s tokenizer")
    with atomic_path(inputs_path) as tmp:
        write_inputs(kept, tmp)
    with atomic_path(dropped_path) as tmp:
        pd.DataFrame(dropped, columns=["pair_id", "harmful_tokens", "benign_tokens"]).to_csv(
            tmp, index=False, lineterminator="\n")
    return len(kept), len(dropped)


# ---------------------------------------------------------------- mediation stages
def _engine(cfg: dict, manifest: dict, threads: int) -> tuple[MediationEngine, object]:
    model, tokenizer = load_for_stage(cfg, manifest, threads)
    engine = MediationEngine(model, manifest["refusal_token_ids"], cfg["engine"]["memory_budget_mb"],
                             cfg["engine"]["max_batch_size"])
    return engine, tokenizer


def _pairs(cfg: dict, inputs_path: str | Path) -> list[EncodedPair]:
    med = cfg["mediation"]
    return select_pairs(read_inputs(inputs_path), med["split"], med["max_pairs"])


def _check_positions(cfg: dict, names: list[str]) -> None:
    if cfg["prompts"]["mode"] == "unpaired" and "all" in names:
        raise ValueError("mediation: positions 'all' needs token-aligned minimal pairs; "
                         "in prompts.mode 'unpaired' use only 'post' and 'last'")


def _sweep(engine: MediationEngine, pairs: list[EncodedPair], cells_of, desc: str) -> list[dict]:
    """Run ``cells_of(index, pair)`` for every pair with one progress bar over interventions."""
    planned = [(pair, cells_of(i, pair)) for i, pair in enumerate(pairs)]
    total = sum(len(cells) for _, cells in planned)
    rows: list[dict] = []
    with tqdm(total=total, desc=desc, unit="patch", mininterval=5, disable=None) as bar:
        for pair, cells in planned:
            runs = mediation.clean_runs(engine, pair)
            rows.extend(mediation.run_cells(engine, pair, cells, runs, progress=bar))
    return rows


def mediate_layer(cfg: dict, manifest: dict, inputs_path: str | Path, out_csv: str | Path,
                  tokens_json: str | Path, threads: int = 1) -> None:
    med = cfg["mediation"]
    _check_positions(cfg, med["layer_positions"])
    engine, tokenizer = _engine(cfg, manifest, threads)
    pairs = _pairs(cfg, inputs_path)
    n_heat = _heatmap_pairs(cfg)
    heat_residual = "residual" in med["heatmap"]["sites"]
    rows = _sweep(engine, pairs, lambda i, pair: mediation.layer_cells(
        pair, engine.sites.n_layers, med["layer_positions"], heatmap=heat_residual and i < n_heat), "layer")
    with atomic_path(out_csv) as tmp:
        mediation.write_rows(rows, tmp)
    tokens = {p.pair_id: tokenizer.convert_ids_to_tokens(p.harmful_ids) for p in pairs[:n_heat]}
    write_json(tokens, tokens_json)
    log.info("engine stats: %s", engine.stats)


def _heatmap_pairs(cfg: dict) -> int:
    return 0 if cfg["prompts"]["mode"] == "unpaired" else cfg["mediation"]["heatmap"]["n_pairs"]


def mediate_module(cfg: dict, manifest: dict, inputs_path: str | Path, module_csv: str | Path,
                   severed_csv: str | Path, threads: int = 1) -> None:
    med = cfg["mediation"]
    _check_positions(cfg, med["module_positions"] + [med["severed_positions"]])
    engine, _ = _engine(cfg, manifest, threads)
    pairs = _pairs(cfg, inputs_path)
    n_heat = _heatmap_pairs(cfg)
    n_layers = engine.sites.n_layers
    module_rows = _sweep(engine, pairs, lambda i, pair: mediation.module_cells(
        pair, n_layers, med["module_positions"], med["windows"],
        med["heatmap"]["sites"] if i < n_heat else []), "module")
    severed_rows = _sweep(engine, pairs, lambda i, pair: mediation.severed_cells(
        pair, n_layers, med["severed_positions"]), "severed")
    with atomic_path(module_csv) as tmp:
        mediation.write_rows(module_rows, tmp)
    with atomic_path(severed_csv) as tmp:
        mediation.write_rows(severed_rows, tmp, extra=["severed"])
    log.info("engine stats: %s", engine.stats)


# ---------------------------------------------------------------- running under Snakemake
def run_stage(smk, stage) -> None:
    """Run ``stage(smk)`` with logging (and library warnings) sent to the rule's log file."""
    handler = logging.FileHandler(smk.log[0], mode="w") if smk.log else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        stage(smk)
    except Exception:
        log.exception("stage failed")
        raise
    finally:
        root.removeHandler(handler)
        handler.close()
