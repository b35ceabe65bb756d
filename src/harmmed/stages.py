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

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from .prompts import PAIR_COLUMNS, EncodedPair, encode_pairs, read_inputs, read_pairs, select_pairs, split_pairs, write_inputs

if TYPE_CHECKING:  # model stages import torch lazily, so figure/claims jobs run without it
    from .engine import MediationEngine

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
    from .arch import resolve_sites
    from .metrics import refusal_token_ids
    from .models import fetch_model, load_model

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
    import torch

    from .models import load_model

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
    from .engine import MediationEngine

    model, tokenizer = load_for_stage(cfg, manifest, threads)
    engine = MediationEngine(model, manifest["refusal_token_ids"], cfg["engine"]["memory_budget_mb"],
                             cfg["engine"]["max_batch_size"])
    return engine, tokenizer


def _pairs(cfg: dict, inputs_path: str | Path) -> list[EncodedPair]:
    med = cfg["mediation"]
    return select_pairs(read_inputs(inputs_path), med["split"], med["max_pairs"])


def _sweep(engine: MediationEngine, pairs: list[EncodedPair], cells_of, desc: str) -> list[dict]:
    """Run ``cells_of(index, pair)`` for every pair with one progress bar over interventions."""
    from . import mediation

    planned = [(pair, cells_of(i, pair)) for i, pair in enumerate(pairs)]
    total = sum(len(cells) for _, cells in planned)
    rows: list[dict] = []
    with tqdm(total=total, desc=desc, unit="patch", mininterval=10, disable=False) as bar:
        for pair, cells in planned:
            runs = mediation.clean_runs(engine, pair)
            rows.extend(mediation.run_cells(engine, pair, cells, runs, progress=bar))
    return rows


def mediate_layer(cfg: dict, manifest: dict, inputs_path: str | Path, out_csv: str | Path,
                  severed_csv: str | Path, threads: int = 1) -> None:
    """Residual layer curves and the severed paths. The severed paths' ``none`` rows are the
    layer curves' NIE(all) interventions, so they share one stage and the engine computes each
    once."""
    from . import mediation

    med = cfg["mediation"]
    engine, _ = _engine(cfg, manifest, threads)
    n_layers = engine.sites.n_layers
    rows = _sweep(engine, _pairs(cfg, inputs_path), lambda i, pair: mediation.layer_cells(
        pair, n_layers, med["layer_positions"]) + mediation.severed_cells(pair, n_layers, med["severed_positions"]),
        "layer")
    with atomic_path(out_csv) as tmp:
        mediation.write_rows([row for row in rows if "severed" not in row], tmp)
    with atomic_path(severed_csv) as tmp:
        mediation.write_rows([row for row in rows if "severed" in row], tmp, extra=["severed"])
    log.info("engine stats: %s", engine.stats)


def mediate_module(cfg: dict, manifest: dict, inputs_path: str | Path, module_csv: str | Path,
                   threads: int = 1) -> None:
    from . import mediation

    med = cfg["mediation"]
    engine, _ = _engine(cfg, manifest, threads)
    rows = _sweep(engine, _pairs(cfg, inputs_path), lambda i, pair: mediation.module_cells(
        pair, engine.sites.n_layers, med["module_positions"], med["windows"]), "module")
    with atomic_path(module_csv) as tmp:
        mediation.write_rows(rows, tmp)
    log.info("engine stats: %s", engine.stats)


def mediate_heatmap(cfg: dict, manifest: dict, inputs_path: str | Path, heatmap_csv: str | Path,
                    tokens_json: str | Path, threads: int = 1) -> None:
    """Layer x position NIE of the configured sites on the first heatmap pairs (Meng et al.'s
    three panels), and those pairs' tokens for the axis labels. Unpaired prompts have no
    position-aligned counterpart, so they get an empty table."""
    from . import mediation

    med = cfg["mediation"]
    engine, tokenizer = _engine(cfg, manifest, threads)
    pairs = _pairs(cfg, inputs_path)[: _heatmap_pairs(cfg)]
    rows = _sweep(engine, pairs, lambda i, pair: mediation.heatmap_cells(
        pair, engine.sites.n_layers, med["heatmap"]["sites"]), "heatmap")
    with atomic_path(heatmap_csv) as tmp:
        mediation.write_rows(rows, tmp)
    write_json({p.pair_id: tokenizer.convert_ids_to_tokens(p.harmful_ids) for p in pairs}, tokens_json)
    log.info("engine stats: %s", engine.stats)


def _heatmap_pairs(cfg: dict) -> int:
    return 0 if cfg["prompts"]["mode"] == "unpaired" else cfg["mediation"]["heatmap"]["n_pairs"]


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


# ---------------------------------------------------------------- fetch_public_datasets
def fetch_public_datasets(cfg: dict, raw_dir: str | Path, pairs_csv: str | Path) -> int:
    """Download the opted-in public sets (sha256-locked) and sample unpaired pairs from them."""
    from .public_datasets import build_unpaired_pairs, fetch_sources, load_prompts

    public = cfg["prompts"]["public"]
    names = public["harmful"] + public["benign"]
    paths = fetch_sources(names, Path(raw_dir), Path(public["lock_file"]), public["url_overrides"])
    harmful = [p for name in public["harmful"] for p in load_prompts(name, paths[name])]
    benign = [p for name in public["benign"] for p in load_prompts(name, paths[name])]
    pairs = build_unpaired_pairs(harmful, benign, public["n_pairs"], public["seed"])
    with atomic_path(pairs_csv) as tmp:
        pd.DataFrame(pairs, columns=list(PAIR_COLUMNS)).to_csv(tmp, index=False, lineterminator="\n")
    log.info("unpaired pairs: %d sampled from %s", len(pairs), ", ".join(names))
    return len(pairs)


# ---------------------------------------------------------------- figures and claims
def _read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _read_rows(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"positions": str}, keep_default_na=False)


def figures(cfg: dict, manifest_path: str, layer_csv: str, module_csv: str, severed_csv: str,
            heatmap_csv: str, inputs_path: str, tokens_json: str, out_dir: str | Path) -> None:
    from . import plotting

    manifest = _read_json(manifest_path)
    layer, module, severed = _read_rows(layer_csv), _read_rows(module_csv), _read_rows(severed_csv)
    boot = dict(n_boot=cfg["effects"]["bootstrap_samples"], ci=cfg["effects"]["ci"], seed=cfg["effects"]["seed"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plotting.plot_layer_curves(layer, manifest, out_dir / "layer_curves", **boot)
    plotting.plot_module_curves(module, manifest, out_dir / "module_curves", **boot)
    plotting.plot_severed(severed, manifest, out_dir / "severed_paths", **boot)
    inputs = [json.loads(line) for line in Path(inputs_path).read_text(encoding="utf-8").splitlines() if line]
    plotting.plot_heatmaps(_read_rows(heatmap_csv), inputs, _read_json(tokens_json), manifest, out_dir / "heatmap")


def cross_model_figure(cfg: dict, manifests: list[str], layer_csvs: list[str], out: str | Path) -> None:
    from . import plotting

    named = {_read_json(m)["name"]: (m, csv) for m, csv in zip(manifests, layer_csvs)}
    boot = dict(n_boot=cfg["effects"]["bootstrap_samples"], ci=cfg["effects"]["ci"], seed=cfg["effects"]["seed"])
    plotting.plot_cross_model({n: _read_rows(c) for n, (_, c) in named.items()},
                              {n: _read_json(m) for n, (m, _) in named.items()},
                              Path(out).with_suffix(""), **boot)


def claims(cfg: dict, manifest_path: str, layer_csv: str, module_csv: str, severed_csv: str, sparsity_csv: str,
           gating_csv: str, ranking_csv: str, probe_csv: str, claims_csv: str, claims_md: str) -> None:
    from .claims import c3_rows, compute_claims, write_claims
    from .probe import c4_from_config

    manifest = _read_json(manifest_path)
    effects, thresholds = cfg["effects"], cfg["claims"]["thresholds"]
    boot = (effects["bootstrap_samples"], effects["ci"], effects["seed"])
    c3 = c3_rows(pd.read_csv(sparsity_csv, keep_default_na=False), pd.read_csv(gating_csv, keep_default_na=False),
                 pd.read_csv(ranking_csv), int(manifest["d_mlp"]), thresholds, *boot)
    c4 = pd.DataFrame([c4_from_config(pd.read_csv(probe_csv), manifest, cfg)])
    table = compute_claims(_read_rows(layer_csv), _read_rows(module_csv), _read_rows(severed_csv), manifest,
                           thresholds, *boot, extra_rows=pd.concat([c3, c4], ignore_index=True))
    with atomic_path(claims_csv) as tmp_csv, atomic_path(claims_md) as tmp_md:
        write_claims(table, tmp_csv, tmp_md, title=f"Claims: {manifest['name']}")


# ---------------------------------------------------------------- neuron and gating stages
def _final_and_extra_layers(n_layers: int, extra: list[int]) -> list[int]:
    layers = [n_layers - 1]
    for layer in extra:
        resolved = layer % n_layers if -n_layers <= layer < n_layers else None
        if resolved is None:
            raise ValueError(f"neuron.extra_layers: layer {layer} outside a {n_layers}-layer model")
        if resolved not in layers:
            layers.append(resolved)
    return layers


def mediate_neuron(cfg: dict, manifest: dict, inputs_path: str | Path, neuron_csv: str | Path,
                   ranking_csv: str | Path, sparsity_csv: str | Path, threads: int = 1) -> None:
    """Exact per-neuron NIE (final and extra layers), blocks, the discovery ranking and the
    sparsity curve (joint top-k vs random-k at the final layer)."""
    from . import neuron

    settings = cfg["neuron"]
    engine, _ = _engine(cfg, manifest, threads)
    n_layers = engine.sites.n_layers
    pairs = select_pairs(read_inputs(inputs_path), settings["split"], settings["max_pairs"])
    plan = neuron.NeuronPlan(_final_and_extra_layers(n_layers, settings["extra_layers"]),
                             settings["block_size"], settings["block_max_pairs"] or len(pairs))
    rows = neuron.sweep_pairs(engine, pairs, lambda i, pair, runs: neuron.pair_neuron_rows(
        engine, pair, runs, plan, every_layer_blocks=i < plan.block_pairs), "neuron")
    frame = pd.DataFrame(rows, columns=neuron.NEURON_COLUMNS)
    ranking = pd.concat([neuron.rank_units(frame, site, n_layers - 1) for site in ("neuron", "heads")],
                        ignore_index=True)
    grid = neuron.k_grid(engine.sites.d_mlp, [settings["block_size"], cfg["gating"]["top_k"]])
    sparsity = neuron.sweep_pairs(engine, pairs, lambda i, pair, runs: neuron.sparsity_rows(
        engine, pair, runs, ranking, grid, settings["random_draws"], settings["seed"] + i), "sparsity")
    with atomic_path(neuron_csv) as tmp:
        neuron.write_table(rows, neuron.NEURON_COLUMNS, tmp)
    with atomic_path(ranking_csv) as tmp:
        ranking.to_csv(tmp, index=False, float_format="%.9g", lineterminator="\n")
    with atomic_path(sparsity_csv) as tmp:
        neuron.write_table(sparsity, neuron.SPARSITY_COLUMNS, tmp)
    log.info("neuron stage: %d pairs, engine stats %s", len(pairs), engine.stats)


def gating(cfg: dict, manifest: dict, inputs_path: str | Path, ranking_csv: str | Path, gating_csv: str | Path,
           units_json: str | Path, threads: int = 1) -> None:
    """Held-out test of the top-k final-layer neurons chosen on the discovery split."""
    from . import neuron

    settings = cfg["gating"]
    engine, _ = _engine(cfg, manifest, threads)
    final = engine.sites.n_layers - 1
    all_pairs = read_inputs(inputs_path)
    pairs = select_pairs(all_pairs, settings["split"], settings["max_pairs"])
    discovery = select_pairs(all_pairs, cfg["neuron"]["split"], cfg["neuron"]["max_pairs"])
    ranking = pd.read_csv(ranking_csv)
    k = settings["top_k"]
    rng = np.random.default_rng(settings["seed"])
    unit_sets = {
        "topk_neuron": [neuron.top_units(ranking, settings["metric"], "neuron", k)],
        "topk_heads": [neuron.top_units(ranking, settings["metric"], "heads", k)],
        "random_neuron": [sorted(rng.choice(engine.sites.d_mlp, k, replace=False).tolist())
                          for _ in range(settings["random_draws"])],
    }
    means = neuron.benign_means(engine, discovery, ("neuron", "heads"), final)
    rows = neuron.sweep_pairs(engine, pairs, lambda i, pair, runs: neuron.gating_rows(
        engine, pair, runs, unit_sets, means), "gating")
    with atomic_path(gating_csv) as tmp:
        neuron.write_table(rows, neuron.GATING_COLUMNS, tmp)
    with atomic_path(units_json) as tmp:
        neuron.gating_units_json(tmp, final, unit_sets["topk_neuron"][0], means["neuron"], unit_sets["random_neuron"][0])
    log.info("gating stage: %d pairs, engine stats %s", len(pairs), engine.stats)


def neuron_figures(cfg: dict, manifest_path: str, neuron_csv: str, ranking_csv: str, sparsity_csv: str,
                   gating_csv: str, out_dir: str | Path) -> None:
    from . import plotting

    manifest = _read_json(manifest_path)
    boot = dict(n_boot=cfg["effects"]["bootstrap_samples"], ci=cfg["effects"]["ci"], seed=cfg["effects"]["seed"])
    out_dir = Path(out_dir)
    neuron_df = pd.read_csv(neuron_csv, dtype={"positions": str, "block": str, "neuron": str}, keep_default_na=False)
    plotting.plot_neuron_distribution(pd.read_csv(ranking_csv), manifest, out_dir / "neuron_distribution")
    plotting.plot_sparsity(pd.read_csv(sparsity_csv, keep_default_na=False), manifest, out_dir / "sparsity", **boot)
    plotting.plot_block_vs_sum(neuron_df, manifest, out_dir / "block_vs_sum")
    plotting.plot_gating(pd.read_csv(gating_csv, keep_default_na=False), manifest, out_dir / "gating", **boot)


# ---------------------------------------------------------------- finetune_model
def _describe_model(model, tokenizer, spec: dict, phrases: list[str]) -> dict:
    """The manifest fields every model stage reads, whatever the model's source."""
    from .arch import resolve_sites
    from .metrics import refusal_token_ids

    sites = resolve_sites(model)
    refusal_ids = refusal_token_ids(tokenizer, phrases)
    return {
        "architecture": model.config.model_type, "n_layers": sites.n_layers, "d_model": sites.d_model,
        "d_mlp": sites.d_mlp, "vocab_size": model.get_output_embeddings().weight.shape[0],
        "dtype": spec["dtype"], "device": spec["device"], "chat_template": tokenizer.chat_template,
        "refusal_phrases": phrases, "refusal_token_ids": refusal_ids,
        "refusal_tokens": [tokenizer.convert_ids_to_tokens(i) for i in refusal_ids],
    }


def _held_out_pairs(cfg: dict, tokenizer, split: str) -> list[EncodedPair]:
    """The configured prompt pairs under this tokenizer, split as prepare_prompts splits them."""
    prompts = cfg["prompts"]
    rows = read_pairs(prompts["pairs_file"])
    kept, _ = encode_pairs(tokenizer, rows, prompts["mode"],
                           split_pairs(rows, prompts["discovery_fraction"], prompts["split_seed"]))
    return select_pairs(kept, split, None)


def _save_model(model, tokenizer, out_dir: Path) -> Path:
    """Safetensors weights and the tokenizer, staged beside ``out_dir`` and moved in whole."""
    import shutil

    staged = out_dir.with_name(f".{out_dir.name}-staged")
    shutil.rmtree(staged, ignore_errors=True)
    model.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(staged, out_dir)
    return out_dir


def finetune_model(cfg: dict, name: str, base_manifest_path: str | Path, models_dir: str | Path,
                   manifest_path: str | Path, threads: int = 1) -> dict:
    """Train a copy of the base's chosen components to refuse, save it as safetensors, check its
    behaviour on held-out pairs and write its manifest. A model failing the check is never
    silently used: with ``finetune.on_failure: error`` the stage fails (its figures are kept in
    ``<manifest>.failed.json``); with ``mark`` the manifest says ``behaviour.passed: false``."""
    import time

    import torch

    from .behaviour import BehaviourCheckError, behaviour_check, describe_failure
    from .components import parse_trainable
    from .fetch import sha256_file
    from .finetune import TrainSettings, balanced_subset, encode_examples, read_training_rows, resolve_trainable, train
    from .models import load_model, safetensors_digest

    torch.set_num_threads(max(1, threads))
    index = next(i for i, m in enumerate(cfg["models"]) if m["name"] == name)
    spec, settings = model_spec(cfg, name), cfg["finetune"]
    base = json.loads(Path(base_manifest_path).read_text(encoding="utf-8"))
    model, tokenizer = load_model(base["path"], "float32", spec["device"], spec.get("trust_remote_code", False))
    component = parse_trainable(spec["trainable"], f"models[{index}].trainable")
    plan = resolve_trainable(model, component, spec["seed"], f"models[{index}].trainable")
    rows = balanced_subset(read_training_rows(spec["data"]), spec.get("max_examples"), spec["seed"])
    examples = encode_examples(tokenizer, rows)
    run = TrainSettings(spec["epochs"], spec["lr"], spec["batch_size"], spec["seed"])
    start = time.perf_counter()
    losses = train(model, plan, examples, run, tokenizer.pad_token_id)
    seconds = time.perf_counter() - start
    log.info("%s: trained %d parameters in %.1f s, loss per epoch %s", name, plan.count(model), seconds, losses)

    out_dir = _save_model(model, tokenizer, Path(models_dir) / name / "hf")
    manifest = {
        "name": name, "source": "finetune", "path": str(out_dir), "revision": None,
        "sha256": safetensors_digest(out_dir), **_describe_model(model, tokenizer, spec, cfg["metrics"]["refusal_phrases"]),
        "base": spec["base"], "base_sha256": base["sha256"], "data": str(spec["data"]),
        "data_sha256": sha256_file(spec["data"]), "max_examples": spec.get("max_examples"),
        "examples": [e.example_id for e in examples], "trainable": spec["trainable"],
        "trainable_parameters": plan.names, "trainable_count": plan.count(model),
        "planted": None if component.planted() is None else {**component.planted(), "unit_ids": plan.units},
        "seed": spec["seed"], "epochs": spec["epochs"], "lr": spec["lr"], "batch_size": spec["batch_size"],
        "threads": max(1, threads), "torch": torch.__version__, "loss_per_epoch": losses,
        "training_seconds": round(seconds, 3),
    }
    if manifest["planted"] is not None and plan.units is None:
        del manifest["planted"]["unit_ids"]
    pairs = _held_out_pairs(cfg, tokenizer, settings["check_split"])
    manifest["behaviour"] = behaviour_check(model, tokenizer, select_pairs(pairs, settings["check_split"],
                                                                           settings["max_pairs"]),
                                            manifest["refusal_token_ids"], cfg["generation"]["judge"]["phrases"],
                                            settings["max_new_tokens"], settings["thresholds"])
    log.info("%s behaviour: %s", name, {k: v for k, v in manifest["behaviour"].items() if k != "thresholds"})
    if not manifest["behaviour"]["passed"] and settings["on_failure"] == "error":
        write_json(manifest, f"{manifest_path}.failed.json")
        raise BehaviourCheckError(describe_failure(name, manifest["behaviour"]))
    write_json(manifest, manifest_path)
    return manifest


# ---------------------------------------------------------------- recovery
def recovery(cfg: dict, manifest_path: str | Path, inputs_path: str | Path, ranking_csv: str | Path,
             recovery_csv: str | Path, threads: int = 1) -> pd.DataFrame:
    """Recovery statistics of one model: against its own plant (with targets), or, for a model
    without one, against every configured plant (the null)."""
    from . import recovery as rec
    from .components import ComponentSpec

    settings = cfg["recovery"]
    manifest = _read_json(manifest_path)
    plants = rec.configured_plants(cfg["models"], int(manifest["d_mlp"]))
    own = manifest.get("planted")
    if own is not None:  # the manifest is the ground truth: the units it trained
        layers = (own["layer"], own["layer"]) if own["site"] == "neuron" else tuple(own["layers"])
        plants = [rec.Plant(manifest["name"], ComponentSpec(own["site"], layers, own.get("units")),
                            tuple(own.get("unit_ids") or ()))]
    ranking = pd.read_csv(ranking_csv)
    rankings = {p.name: rec.ranked_units(ranking, cfg["gating"]["metric"], p.band[0])
                for p in plants if p.spec.site == "neuron"}
    engine, _ = _engine(cfg, manifest, threads)
    pairs = select_pairs(read_inputs(inputs_path), settings["split"], settings["max_pairs"])
    effects = pd.DataFrame([rec.pair_effects(engine, pair, plants, rankings)
                            for pair in tqdm(pairs, desc="recovery", unit="pair", mininterval=10)])
    effects = effects.reindex(sorted(effects.columns), axis=1)
    boot = (cfg["effects"]["bootstrap_samples"], cfg["effects"]["ci"], cfg["effects"]["seed"])
    rows = rec.recovery_rows(manifest["name"], effects, plants, manifest["name"] if own else None, rankings,
                             engine.sites.n_layers, rec.Targets(**settings["targets"]), cfg["effects"]["min_abs_te"],
                             boot)
    if "behaviour" in manifest:
        rows.append({"model": manifest["name"], "plant": manifest["name"] if own else "", "statistic": "behaviour_check",
                     "value": float(manifest["behaviour"]["passed"]), "ci_low": float("nan"), "ci_high": float("nan"),
                     "target": "1", "pass": bool(manifest["behaviour"]["passed"]), "n_pairs": len(pairs)})
    with atomic_path(recovery_csv) as tmp:
        rec.write_recovery(rows, tmp)
    log.info("recovery of %s on %d pairs:\n%s", manifest["name"], len(pairs), pd.DataFrame(rows).to_string(index=False))
    return pd.DataFrame(rows)


def recovery_figure(recovery_csvs: list[str], out: str | Path) -> None:
    from .recovery import plot_recovery

    plot_recovery([pd.read_csv(p, keep_default_na=False, dtype={"pass": str}).replace("", np.nan)
                   .assign(ci_low=lambda d: pd.to_numeric(d["ci_low"]), ci_high=lambda d: pd.to_numeric(d["ci_high"]),
                           value=lambda d: pd.to_numeric(d["value"]))
                   for p in recovery_csvs], Path(out).with_suffix(""))
