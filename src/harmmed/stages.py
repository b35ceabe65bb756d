"""One function per workflow stage: read inputs, call the library, write outputs.

This is the orchestrator on top of the library: every Snakemake script calls exactly one
function here, and no analysis module imports this one. Stages take the config, the model
manifest (a path, or an already-read mapping) and named input/output paths, so every stage can
also be run (and tested) from Python without Snakemake.
"""

from __future__ import annotations

import gc
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .constants import (GATING_COLUMNS, NEURON_COLUMNS, PROBE_COLUMNS, ROW_COLUMNS, SPARSITY_COLUMNS,
                        UNIT_SITES)
from .prompts import (DROPPED_COLUMNS, PAIR_COLUMNS, EncodedPair, encode_pairs, read_inputs, read_pairs, select_pairs,
                      split_pairs, write_inputs)
from .shards import WHOLE, Shard, concat_tables, merge_json_objects, shard_offset, take_shard
from .storage import (atomic_path, load_engine, model_spec, read_json, read_jsonl, read_manifest, read_table,
                      write_json, write_table)

if TYPE_CHECKING:  # model stages import torch lazily, so figure/claims jobs run without it
    from .engine import MediationEngine

Paths = Mapping[str, Any]  # named file paths, e.g. a Snakemake rule's input or output
ManifestSource = str | Path | Mapping[str, Any]

log = logging.getLogger("harmmed")


# ---------------------------------------------------------------- download_model
def download_model(cfg: dict, name: str, models_dir: str | Path, manifest_path: str | Path) -> dict:
    from .models import fetch_model, load_model

    spec = model_spec(cfg, name)
    record = fetch_model(spec, Path(models_dir))
    model, tokenizer = load_model(record["path"], spec["dtype"], "cpu", spec.get("trust_remote_code", False))
    manifest = {**record, **_describe_model(model, tokenizer, spec, cfg["metrics"]["refusal_phrases"])}
    write_json(manifest, manifest_path)
    return manifest


def _describe_model(model, tokenizer, spec: dict, phrases: list[str]) -> dict:
    """The manifest fields every model stage reads, whatever the model's source."""
    from .arch import resolve_sites
    from .metrics import refusal_token_ids

    sites = resolve_sites(model)
    refusal_ids = refusal_token_ids(tokenizer, phrases)
    return {
        "architecture": model.config.model_type, "n_layers": sites.n_layers, "d_model": sites.d_model,
        "d_mlp": sites.d_mlp, "vocab_size": model.get_output_embeddings().weight.shape[0], "dtype": spec["dtype"],
        "device": spec["device"], "chat_template": tokenizer.chat_template, "refusal_phrases": phrases,
        "refusal_token_ids": refusal_ids, "refusal_tokens": [tokenizer.convert_ids_to_tokens(i) for i in refusal_ids],
    }


# ---------------------------------------------------------------- prepare_prompts
def prepare_prompts(cfg: dict, manifest: ManifestSource, pairs_file: str | Path, inputs_path: str | Path,
                    dropped_path: str | Path) -> tuple[int, int]:
    """Encode, check alignment, split. Returns (kept, dropped)."""
    from transformers import AutoTokenizer

    prompts, manifest = cfg["prompts"], read_manifest(manifest)
    rows = read_pairs(pairs_file)
    tokenizer = AutoTokenizer.from_pretrained(manifest["path"])  # tokenizer files only: no weights to check
    split_of = split_pairs(rows, prompts["discovery_fraction"], prompts["split_seed"])
    kept, dropped = encode_pairs(tokenizer, rows, prompts["mode"], split_of, cfg["noise"],
                                 request_span=prompts["public"]["enabled"])
    log.info("prompt pairs: %d read, %d kept, %d dropped (not token-aligned or identical ids) under %s",
             len(rows), len(kept), len(dropped), manifest["name"])
    if not kept:
        raise ValueError(f"{pairs_file}: no pair is token-aligned under {manifest['name']}'s tokenizer")
    with atomic_path(inputs_path) as tmp:
        write_inputs(kept, tmp)
    write_table(dropped, DROPPED_COLUMNS, dropped_path)
    return len(kept), len(dropped)


# ---------------------------------------------------------------- mediation stages
def _pairs(cfg: dict, inputs_path: str | Path, shard: Shard = WHOLE) -> list[EncodedPair]:
    med = cfg["mediation"]
    return take_shard(select_pairs(read_inputs(inputs_path), med["split"], med["max_pairs"], "mediation.split"), shard)


def merge_shards(shard_paths: list[str], out: str | Path) -> None:
    """One table (or heatmap-token JSON) from a sharded stage's parts, in shard order."""
    if Path(out).suffix == ".json":
        merge_json_objects(shard_paths, out)
    else:
        log.info("merged %d shards, %d rows into %s", len(shard_paths), concat_tables(shard_paths, out), out)


def _sweep(engine: MediationEngine, pairs: list[EncodedPair], cells_of, desc: str) -> list[dict]:
    from .sweep import sweep_cells

    return sweep_cells(engine, pairs, cells_of, desc)


def mediate_layer(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, out_csv: str | Path,
                  severed_csv: str | Path, threads: int = 1, shard: Shard = WHOLE) -> None:
    """Residual layer curves and the severed paths. The severed paths' ``none`` rows are the
    layer curves' NIE(all) interventions, so they share one stage and the engine computes each
    once."""
    from . import mediation

    med = cfg["mediation"]
    engine, _ = load_engine(cfg, read_manifest(manifest), threads)
    n_layers = engine.sites.n_layers
    rows = _sweep(engine, _pairs(cfg, inputs_path, shard), lambda i, pair: mediation.layer_cells(
        pair, n_layers, med["layer_positions"]) + mediation.severed_cells(pair, n_layers, med["severed_positions"]),
        "layer")
    write_table([row for row in rows if "severed" not in row], ROW_COLUMNS, out_csv)
    write_table([row for row in rows if "severed" in row], ROW_COLUMNS + ["severed"], severed_csv)
    log.info("engine stats: %s", engine.stats)


def mediate_module(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, module_csv: str | Path,
                   threads: int = 1, shard: Shard = WHOLE) -> None:
    from . import mediation

    med = cfg["mediation"]
    engine, _ = load_engine(cfg, read_manifest(manifest), threads)
    rows = _sweep(engine, _pairs(cfg, inputs_path, shard), lambda i, pair: mediation.module_cells(
        pair, engine.sites.n_layers, med["module_positions"], med["windows"]), "module")
    write_table(rows, ROW_COLUMNS, module_csv)
    log.info("engine stats: %s", engine.stats)


def mediate_heatmap(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, heatmap_csv: str | Path,
                    tokens_json: str | Path, threads: int = 1, shard: Shard = WHOLE) -> None:
    """Layer x position NIE of the configured sites on the first heatmap pairs (Meng et al.'s
    three panels), and those pairs' tokens for the axis labels. Unpaired prompts have no
    position-aligned counterpart, so they get an empty table."""
    from . import mediation

    med = cfg["mediation"]
    engine, tokenizer = load_engine(cfg, read_manifest(manifest), threads)
    pairs = take_shard(_pairs(cfg, inputs_path)[: _heatmap_pairs(cfg)], shard)
    rows = _sweep(engine, pairs, lambda i, pair: mediation.heatmap_cells(
        pair, engine.sites.n_layers, med["heatmap"]["sites"]), "heatmap")
    write_table(rows, ROW_COLUMNS, heatmap_csv)
    write_json({p.pair_id: tokenizer.convert_ids_to_tokens(p.harmful_ids) for p in pairs}, tokens_json)
    log.info("engine stats: %s", engine.stats)


def _heatmap_pairs(cfg: dict) -> int:  # noise mode corrupts the harmful prompt itself: positions align
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
    write_table(pairs, [*PAIR_COLUMNS, "harmful_target_source"], pairs_csv)
    log.info("unpaired pairs: %d sampled from %s", len(pairs), ", ".join(names))
    return len(pairs)


# ---------------------------------------------------------------- figures and claims
def _boot(cfg: dict) -> dict[str, Any]:
    from .effects import Bootstrap

    return Bootstrap.from_config(cfg).kwargs()


def figures(cfg: dict, inputs: Paths, out_dir: str | Path) -> None:
    """Layer, module, severed-path curves and the heatmaps. ``inputs``: manifest, layer, module,
    severed, heatmap, inputs (inputs.jsonl), tokens (heatmap_tokens.json)."""
    from . import plotting

    manifest, boot, out_dir = read_manifest(inputs["manifest"]), _boot(cfg), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plotting.plot_layer_curves(read_table(inputs["layer"]), manifest, out_dir / "layer_curves", **boot)
    plotting.plot_module_curves(read_table(inputs["module"]), manifest, out_dir / "module_curves", **boot)
    plotting.plot_severed(read_table(inputs["severed"]), manifest, out_dir / "severed_paths", **boot)
    rows = read_jsonl(inputs["inputs"])
    plotting.plot_heatmaps(read_table(inputs["heatmap"]), rows, read_json(inputs["tokens"]), manifest,
                           out_dir / "heatmap")


def cross_model_figure(cfg: dict, manifests: list[str], layer_csvs: list[str], out: str | Path) -> None:
    from . import plotting

    named = {read_manifest(m)["name"]: (m, csv) for m, csv in zip(manifests, layer_csvs)}
    plotting.plot_cross_model({n: read_table(c) for n, (_, c) in named.items()},
                              {n: read_manifest(m) for n, (m, _) in named.items()},
                              Path(out).with_suffix(""), **_boot(cfg))


def claims(cfg: dict, inputs: Paths, outputs: Paths) -> None:
    """claims.csv of one model. ``inputs``: manifest, patches (claim_patches.csv), probe;
    ``outputs``: csv. claims.md is written by the calibration stage, which knows every model."""
    from .claims import compute_claims, write_claims_csv
    from .effects import Bootstrap
    from .probe import c4_row

    manifest, thresholds, boot = read_manifest(inputs["manifest"]), cfg["claims"]["thresholds"], Bootstrap.from_config(cfg)
    c4 = c4_row(pd.read_csv(inputs["probe"]), int(manifest["n_layers"]), float(cfg["probe"]["accuracy_level"]),
                float(thresholds["C4_probe_depth"]), *boot.kwargs().values())
    patches = read_table(inputs["patches"], ("positions", "layers", "units", "draw"))
    table = compute_claims(patches, thresholds, boot, float(cfg["effects"]["min_abs_te"]), c4)
    with atomic_path(outputs["csv"]) as tmp:
        write_claims_csv(table, tmp)


def calibration(cfg: dict, claims_csvs: list[str], outputs: Paths) -> None:
    """Every model's claims against its expected verdicts. ``claims_csvs`` follow the config's
    model order; ``outputs``: csv, png, md (every model's claims.md, in model order)."""
    from .calibration import write_calibration_outputs
    from .claims import read_claims

    names = [spec["name"] for spec in cfg["models"]]
    write_calibration_outputs(dict(zip(names, (read_claims(path) for path in claims_csvs))),
                              {spec["name"]: spec.get("expected_verdicts") or {} for spec in cfg["models"]},
                              cfg["calibration"]["metric"], outputs)


# ---------------------------------------------------------------- neuron and gating stages
def mediate_neuron(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, neuron_csv: str | Path,
                   threads: int = 1, shard: Shard = WHOLE) -> None:
    """Exact per-neuron NIE (final and extra layers) and blocks of adjacent neurons, per pair:
    the rows of ``shard``'s pairs (blocks at every layer on the first ``block_max_pairs``)."""
    from . import neuron

    settings = cfg["neuron"]
    engine, _ = load_engine(cfg, read_manifest(manifest), threads)
    all_pairs = select_pairs(read_inputs(inputs_path), settings["split"], settings["max_pairs"], "neuron.split")
    plan = neuron.NeuronPlan(neuron.final_and_extra_layers(engine.sites.n_layers, settings["extra_layers"]),
                             settings["block_size"], settings["block_max_pairs"] or len(all_pairs))
    offset, pairs = shard_offset(len(all_pairs), shard), take_shard(all_pairs, shard)
    rows = neuron.sweep_pairs(engine, pairs, lambda i, pair, runs: neuron.pair_neuron_rows(
        engine, pair, runs, plan, every_layer_blocks=offset + i < plan.block_pairs), "neuron")
    write_table(rows, NEURON_COLUMNS, neuron_csv)
    log.info("neuron stage: %d pairs, engine stats %s", len(pairs), engine.stats)


def neuron_sparsity(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, neuron_csv: str | Path,
                    ranking_csv: str | Path, sparsity_csv: str | Path, threads: int = 1) -> None:
    """The discovery ranking of final-layer units over every pair of neuron.csv, and the
    sparsity curve (joint top-k vs random-k at the final layer) under that ranking."""
    from . import neuron

    settings = cfg["neuron"]
    engine, _ = load_engine(cfg, read_manifest(manifest), threads)
    final = engine.sites.n_layers - 1
    frame = read_table(neuron_csv, ("positions", "block", "neuron"))
    ranking = pd.concat([neuron.rank_units(frame, site, final) for site in UNIT_SITES], ignore_index=True)
    pairs = select_pairs(read_inputs(inputs_path), settings["split"], settings["max_pairs"], "neuron.split")
    grid = neuron.k_grid(engine.sites.d_mlp, [settings["block_size"], cfg["gating"]["top_k"]])
    sparsity = neuron.sweep_pairs(engine, pairs, lambda i, pair, runs: neuron.sparsity_rows(
        engine, pair, runs, ranking, grid, settings["random_draws"], settings["seed"] + i), "sparsity")
    write_table(ranking, list(ranking.columns), ranking_csv)
    write_table(sparsity, SPARSITY_COLUMNS, sparsity_csv)
    log.info("sparsity: %d pairs, engine stats %s", len(pairs), engine.stats)


def gating(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, ranking_csv: str | Path, gating_csv: str | Path,
           units_json: str | Path, threads: int = 1) -> None:
    """Held-out test of the top-k final-layer neurons chosen on the discovery split."""
    from . import neuron

    settings = cfg["gating"]
    engine, _ = load_engine(cfg, read_manifest(manifest), threads)
    final = engine.sites.n_layers - 1
    all_pairs = read_inputs(inputs_path)
    pairs = select_pairs(all_pairs, settings["split"], settings["max_pairs"], "gating.split")
    discovery = select_pairs(all_pairs, cfg["neuron"]["split"], cfg["neuron"]["max_pairs"], "neuron.split")
    ranking = pd.read_csv(ranking_csv)
    k = settings["top_k"]
    rng = np.random.default_rng(settings["seed"])
    unit_sets = {
        "topk_neuron": [neuron.top_units(ranking, settings["metric"], "neuron", k)],
        "topk_attn_dims": [neuron.top_units(ranking, settings["metric"], "attn_dims", k)],
        "random_neuron": [sorted(rng.choice(engine.sites.d_mlp, k, replace=False).tolist())
                          for _ in range(settings["random_draws"])],
    }
    means = neuron.benign_means(engine, discovery, UNIT_SITES, final)
    rows = neuron.sweep_pairs(engine, pairs, lambda i, pair, runs: neuron.gating_rows(
        engine, pair, runs, unit_sets, means), "gating")
    write_table(rows, GATING_COLUMNS, gating_csv)
    with atomic_path(units_json) as tmp:
        neuron.gating_units_json(tmp, final, unit_sets["topk_neuron"][0], means["neuron"], unit_sets["random_neuron"][0])
    log.info("gating stage: %d pairs, engine stats %s", len(pairs), engine.stats)


def mediate_claims(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, module_csv: str | Path,
                   ranking_csv: str | Path, patches_csv: str | Path, threads: int = 1) -> None:
    """Held-out interventions of the C1-C3 statistics, every component chosen on discovery."""
    from . import claim_patches, neuron
    from .claims import PATCH_COLUMNS

    settings, manifest = cfg["claims"], read_manifest(manifest)
    engine, _ = load_engine(cfg, manifest, threads)
    pairs = select_pairs(read_inputs(inputs_path), settings["split"], settings["max_pairs"], "claims.split")
    plan = claim_patches.build_plan(cfg, manifest, read_table(module_csv), pd.read_csv(ranking_csv))
    log.info("claim plan: %s", plan)
    rows = neuron.sweep_pairs(engine, pairs, lambda i, pair, runs: claim_patches.pair_rows(
        engine, pair, runs, plan), "claims")
    write_table(rows, PATCH_COLUMNS, patches_csv)
    log.info("claim patches: %d pairs, engine stats %s", len(pairs), engine.stats)


def neuron_figures(cfg: dict, inputs: Paths, out_dir: str | Path) -> None:
    """Neuron distribution, sparsity, block-vs-sum and gating figures. ``inputs``: manifest,
    neuron, ranking, sparsity, gating."""
    from . import plotting

    manifest, boot, out_dir = read_manifest(inputs["manifest"]), _boot(cfg), Path(out_dir)
    neuron_df = read_table(inputs["neuron"], ("positions", "block", "neuron"))
    plotting.plot_neuron_distribution(pd.read_csv(inputs["ranking"]), manifest, out_dir / "neuron_distribution")
    plotting.plot_sparsity(read_table(inputs["sparsity"], ()), manifest, out_dir / "sparsity", **boot)
    plotting.plot_block_vs_sum(neuron_df, manifest, out_dir / "block_vs_sum")
    plotting.plot_gating(read_table(inputs["gating"], ()), manifest, out_dir / "gating", **boot)


# ---------------------------------------------------------------- token and probe stages
def mediate_token(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, out_csv: str | Path,
                  threads: int = 1, pairs_path: str | Path | None = None, shard: Shard = WHOLE) -> None:
    """token.csv for the configured split (ROW_COLUMNS plus ``role``). ``pairs_path`` supplies
    the request texts for the roles; it defaults to ``prompts.pairs_file`` (the workflow passes
    the file prepare_prompts read)."""
    from . import token
    from .sweep import sweep

    engine, tokenizer = load_engine(cfg, read_manifest(manifest), threads)
    pairs = take_shard(select_pairs(read_inputs(inputs_path), cfg["token"]["split"], cfg["token"]["max_pairs"], "token.split"), shard)
    roles = token.pair_roles(tokenizer, pairs, token.pair_requests(pairs_path or cfg["prompts"]["pairs_file"]))
    rows = sweep(engine, pairs, lambda i, pair, runs, bar: token.token_rows(engine, pair, roles[pair.pair_id], runs, bar),
                 "token", [token.aligned_count(roles[p.pair_id]) for p in pairs])
    write_table(rows, ROW_COLUMNS + ["role"], out_csv)
    log.info("token: %d pairs, %d rows; engine stats: %s", len(pairs), len(rows), engine.stats)


def token_figures(manifest: ManifestSource, token_csv: str | Path, inputs_path: str | Path, out: str | Path) -> None:
    """The token heatmaps from token.csv (analysis environment, no torch)."""
    from .token import plot_token_heatmap

    token_df = read_table(token_csv, ("positions", "pair_id"))
    plot_token_heatmap(token_df, read_inputs(inputs_path), read_manifest(manifest), out)


def run_probe(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, out_csv: str | Path,
              threads: int = 1) -> pd.DataFrame:
    """probe.csv (per layer, real and shuffled labels) for the configured split."""
    from .probe import probe_accuracy_by_layer, probe_features

    probe = cfg["probe"]
    engine, _ = load_engine(cfg, read_manifest(manifest), threads)
    pairs = select_pairs(read_inputs(inputs_path), probe["split"], probe["max_pairs"], "probe.split")
    features, labels, groups = probe_features(engine, pairs)
    df = probe_accuracy_by_layer(features, labels, groups, probe["folds"], probe["C"], probe["seed"], threads)
    write_table(df, PROBE_COLUMNS, out_csv)
    log.info("probe: %d pairs, %d layers, %d folds", len(pairs), len(features), int(df["folds"].max()))
    return df


def probe_figure(cfg: dict, manifest: ManifestSource, probe_csv: str | Path, out: str | Path) -> None:
    """The probe accuracy figure from probe.csv (analysis environment)."""
    from .probe import plot_probe

    plot_probe(pd.read_csv(probe_csv), read_manifest(manifest), out, level=float(cfg["probe"]["accuracy_level"]))


# ---------------------------------------------------------------- generation stages
def generate_and_judge(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, gating_json: str | Path,
                       out_jsonl: str | Path, rates_csv: str | Path, threads: int = 1,
                       judge_manifest: str | Path | None = None, models_dir: str | Path = "data/models") -> None:
    """Generate every (prompt, condition), free the model, then judge. ``generation.max_prompts``
    caps the number of *pairs*; ``judge_manifest`` pins the judge's fetched weights."""
    from . import generation as gen
    from .judge import judge_name, make_judge

    settings = cfg["generation"]
    pairs = select_pairs(read_inputs(inputs_path), settings["split"], settings["max_prompts"], "generation.split")
    if not pairs:
        raise ValueError(f"{inputs_path}: no pairs in split {settings['split']!r} to generate from")
    conditions = gen.conditions_from_gating(gen.read_gating(gating_json))
    engine, tokenizer = load_engine(cfg, read_manifest(manifest), threads)
    gen.check_conditions(conditions, engine.sites.n_layers, engine.sites.d_mlp)
    records = gen.generate_records(engine, tokenizer, pairs, conditions, settings["max_new_tokens"])
    by_id = {p.pair_id: p for p in pairs}
    prompts = [gen.request_text(tokenizer, r["prompt_ids"], by_id[r["prompt_id"]].post_positions) for r in records]
    del engine
    gc.collect()  # the chat model is no longer needed; a model judge may need the memory
    record = read_json(judge_manifest) if judge_manifest else None
    judged = gen.judge_records(make_judge(settings["judge"], models_dir, record), records, prompts)
    rates = gen.generation_rates(judged, cfg["effects"]["ci"])
    with atomic_path(out_jsonl) as tmp:
        gen.write_records(judged, tmp)
    with atomic_path(rates_csv) as tmp:
        gen.write_rates(rates, tmp)
    log.info("generation rates (%s):\n%s", judge_name(settings["judge"]), rates.to_string(index=False))


def download_judge(cfg: dict, models_dir: str | Path, manifest_path: str | Path) -> dict:
    """Fetch the model judge's weights once (verified, safetensors) and record which bytes."""
    from .models import fetch_model

    judge = cfg["generation"]["judge"]
    if judge["kind"] != "model" or not judge.get("model"):
        raise ValueError("download_judge: generation.judge.kind must be 'model' with a model spec")
    record = {**fetch_model(judge["model"], Path(models_dir)), "kind": "model"}
    write_json(record, manifest_path)
    return record


def generation_figure(manifest: ManifestSource, rates_csv: str | Path, out: str | Path) -> None:
    """``out`` is the PNG path; the PDF is written beside it."""
    from .generation import plot_generation_rates, read_rates

    plot_generation_rates(read_rates(rates_csv), read_manifest(manifest), Path(out).with_suffix(""))


# ---------------------------------------------------------------- provenance, verification, bundles
def _result_paths(results: Path) -> dict[str, str]:
    """One model's result files under the input names the figure and claims stages take."""
    names = {"manifest": "manifest.json", "inputs": "inputs.jsonl", "layer": "layer.csv", "module": "module.csv",
             "severed": "severed.csv", "heatmap": "heatmap.csv", "tokens": "heatmap_tokens.json",
             "neuron": "neuron.csv", "ranking": "neuron_ranking.csv", "sparsity": "sparsity.csv",
             "gating": "gating.csv", "token": "token.csv", "probe": "probe.csv", "rates": "generation_rates.csv",
             "patches": "claim_patches.csv",
             "screen": "screen.csv", "screen_report": "screen_report.csv", "screen_heldout": "screen_heldout.csv"}
    return {key: str(results / name) for key, name in names.items()}


def provenance(cfg: dict, manifest: ManifestSource, pairs_file: str, dataset_files: list[str],
               result_files: list[str], repo: str | Path, threads: int | None, out: str | Path) -> None:
    """results/<model>/provenance.json: the code, config, machine, weights and every file's sha256."""
    from .provenance import build_provenance, portable_path

    record = build_provenance(cfg, read_manifest(manifest), [pairs_file, *dataset_files], result_files, repo, threads)
    record["pairs_file"] = portable_path(pairs_file)
    write_json(record, out)


def verify(cfg: dict, results_dir: str | Path, verification_csv: str | Path, verification_md: str | Path,
           threads: int = 1) -> None:
    """Recompute sampled rows with the reference patcher and check every recorded digest, the
    input encoding and the claims table; write the report, then fail if anything failed."""
    from . import verify as checks_of
    from .provenance import weights_digest

    results = Path(results_dir)
    record = checks_of.read_provenance(results / "provenance.json")
    recorded_cfg, manifest, paths = record["config"], read_manifest(results / "manifest.json"), _result_paths(results)
    digest = weights_digest(manifest["path"])
    checks = checks_of.file_checks(record, results, manifest, digest)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prepare_prompts(recorded_cfg, manifest, record["pairs_file"], tmp / "inputs.jsonl", tmp / "dropped.csv")
        checks.append(checks_of.same_bytes("inputs.jsonl re-encoded from the prompt file", results / "inputs.jsonl",
                                           tmp / "inputs.jsonl"))
        claims(recorded_cfg, paths, {"csv": tmp / "claims.csv"})
        checks.append(checks_of.same_bytes("claims.csv recomputed from the tables", results / "claims.csv",
                                           tmp / "claims.csv"))
    rows = []
    ran = digest == manifest["sha256"] == record["weights"]["sha256"]  # other weights cannot reproduce a row
    if recorded_cfg["prompts"]["mode"] == "noise":
        ran = False
        checks.append(checks_of.Check("rows recomputed", False, "noise mode: the reference draws no embedding noise"))
    if ran:
        rows = checks_of.verify_rows(results, _recomputer(cfg, recorded_cfg, manifest, results, threads),
                                     cfg["verify"]["n_rows"], cfg["verify"]["seed"])
    summary = checks_of.table_summary(rows, cfg["verify"]["tolerance"], results, ran)
    with atomic_path(verification_csv) as tmp_csv, atomic_path(verification_md) as tmp_md:
        text = checks_of.write_report(rows, summary, checks, cfg["verify"]["tolerance"], manifest["name"],
                                      tmp_csv, tmp_md)
    log.info("verification:\n%s", text)
    failed = checks_of.failures(summary, checks)
    if failed:
        raise checks_of.VerificationFailed(f"verification of {results} failed: {', '.join(failed)} (see the log)")


def _recomputer(cfg: dict, recorded_cfg: dict, manifest: dict, results: Path, threads: int):
    """The reference patcher on this machine's device (this config) in the recorded dtype."""
    import torch

    from .models import load_model
    from .provenance import check_device
    from .reference import ReferencePatcher
    from .verify import RowRecomputer

    device = model_spec(cfg, manifest["name"])["device"]
    check_device(device, f"models[{manifest['name']}].device")
    torch.set_num_threads(max(1, threads))
    trust = model_spec(recorded_cfg, manifest["name"]).get("trust_remote_code", False)
    model, _ = load_model(manifest["path"], manifest["dtype"], device, trust)
    return RowRecomputer(ReferencePatcher(model, manifest["refusal_token_ids"]), read_inputs(results / "inputs.jsonl"),
                         recorded_cfg, pd.read_csv(results / "neuron_ranking.csv"))


def bundle(provenance_path: str | Path, out: str | Path) -> None:
    """results-<model>-<commit>.tar.gz (+ .sha256): the tables, provenance and claims."""
    from .bundle import pack

    pack(Path(provenance_path), Path(out))


def figures_from_bundle(bundle_path: str | Path, out_dir: str | Path) -> Path:
    """Check and unpack a bundle, then redraw every figure, claims.md and the report from its tables
    alone (with the config its provenance records); no model, no torch. Returns the folder."""
    from .bundle import BundleError, unpack, write_report

    root = unpack(Path(bundle_path), Path(out_dir))
    for results in sorted(p for p in (root / "results").iterdir() if p.is_dir()):
        cfg, paths = read_json(results / "provenance.json")["config"], _result_paths(results)
        figs = root / "figures" / results.name
        if Path(paths["heatmap"]).is_file():  # absent for a model that skips figures
            figures(cfg, paths, figs)
            neuron_figures(cfg, paths, figs)
        if Path(paths["screen"]).is_file():  # absent for a model that skips screen
            screen_figures(cfg, paths, figs)
        if Path(paths["token"]).is_file():  # absent for a model that skips mediate_token
            token_figures(paths["manifest"], paths["token"], paths["inputs"], figs / "token_heatmap")
        probe_figure(cfg, paths["manifest"], paths["probe"], figs / "probe_accuracy")
        if Path(paths["rates"]).is_file():  # absent for a model that skips generate
            generation_figure(paths["manifest"], paths["rates"], figs / "generation_rates.png")
        claims(cfg, paths, {"csv": figs / "claims.csv"})
        if (figs / "claims.csv").read_bytes() != (results / "claims.csv").read_bytes():
            raise BundleError(f"{bundle_path}: claims recomputed from the tables differ from the bundled claims.csv")
        one_model = {**cfg, "models": [model_spec(cfg, results.name)]}  # claims.md, marked against its plant
        with tempfile.TemporaryDirectory() as grid:  # the cross-model grid needs every model: not redrawn
            calibration(one_model, [str(figs / "claims.csv")], {"csv": Path(grid) / "calibration.csv",
                                                                "png": Path(grid) / "calibration.png",
                                                                "md": [figs / "claims.md"]})
        (figs / "claims.csv").unlink()
        write_report(figs, results.name)
    return root



# ---------------------------------------------------------------- screen_units
def screen_units(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, outputs: Paths,
                 threads: int = 1) -> None:
    """Attribution estimates of every MLP unit at every layer on the screened pairs, verified
    exactly on the first of them, and held-out sparsity and adjacency tests of the screen's
    ranking. ``outputs``: screen, screen_report, screen_heldout."""
    from . import screen, screen_report

    settings = screen.ScreenSettings.from_config(cfg)
    engine, _ = load_engine(cfg, read_manifest(manifest), threads)
    all_pairs, section = read_inputs(inputs_path), cfg["screen"]
    screens, sets_of = screen.screen_pairs(engine, select_pairs(all_pairs, section["split"], section["max_pairs"]),
                                           settings)
    table = screen.screen_table(screens, sets_of)
    report = screen_report.layer_report(table, screen.outcome_table(screens), settings.top_k, engine.sites.n_layers)
    selections = screen.heldout_selections(screen.discovery_ranking(screens, settings.heldout_positions), settings,
                                           settings.seed)
    held = section["held_out"]
    heldout = screen.heldout_sweep(engine, select_pairs(all_pairs, held["split"], held["max_pairs"]), selections,
                                   settings)
    write_table(table, screen.SCREEN_COLUMNS, outputs["screen"])
    write_table(report, screen_report.REPORT_COLUMNS, outputs["screen_report"])
    write_table(heldout, screen.HELDOUT_COLUMNS, outputs["screen_heldout"])
    log.info("screen: %d pairs screened (%d verified), %d held-out rows; engine stats %s", len(screens),
             min(len(screens), settings.verify_pairs), len(heldout), engine.stats)


def screen_figures(cfg: dict, inputs: Paths, out_dir: str | Path) -> None:
    """The screen's four figures. ``inputs``: manifest, screen, screen_report, screen_heldout."""
    from . import screen_plots
    from .screen_report import pair_outcomes, read_screen

    manifest, out_dir, held = read_manifest(inputs["manifest"]), Path(out_dir), cfg["screen"]["held_out"]
    screen = read_screen(inputs["screen"])
    heldout = read_table(inputs["screen_heldout"], ("positions", "units", "draw"))
    outcomes = pair_outcomes(read_table(inputs["screen_report"]))
    screen_plots.plot_screen_scatter(screen, manifest, out_dir / "screen_scatter")
    screen_plots.plot_screen_heatmap(screen, outcomes, manifest, held["positions"], out_dir / "screen_heatmap")
    screen_plots.plot_screen_sparsity(heldout, manifest, out_dir / "screen_sparsity")
    screen_plots.plot_screen_adjacency(heldout, manifest, held["block_size"], out_dir / "screen_adjacency")
# ---------------------------------------------------------------- finetune_model and recovery
def finetune_model(cfg: dict, name: str, base_manifest: ManifestSource, models_dir: str | Path,
                   manifest_path: str | Path, threads: int = 1) -> dict:
    """Train a copy of the base's chosen components to refuse, save it as safetensors, check its
    behaviour on held-out pairs and write its manifest. A model failing the check is never
    silently used: with ``finetune.on_failure: error`` the stage fails (the record is kept in
    ``<manifest>.failed.json``); with ``mark`` the manifest says ``behaviour.passed: false``."""
    from . import finetune
    from .behaviour import BehaviourCheckError, behaviour_check, describe_failure
    from .models import safetensors_digest

    spec, settings = model_spec(cfg, name), cfg["finetune"]
    index = [m["name"] for m in cfg["models"]].index(name)
    base = read_manifest(base_manifest)
    trained = finetune.fine_tune(spec, base, f"models[{index}]", threads)
    out_dir = finetune.save_model(trained.model, trained.tokenizer, Path(models_dir) / name / "hf")
    manifest = {"name": name, "source": "finetune", "path": str(out_dir), "revision": None,
                "sha256": safetensors_digest(out_dir),
                **_describe_model(trained.model, trained.tokenizer, spec, cfg["metrics"]["refusal_phrases"]),
                **trained.record(spec, base)}
    prompts = cfg["prompts"]
    rows = read_pairs(prompts["pairs_file"])
    pairs, _ = encode_pairs(trained.tokenizer, rows, prompts["mode"],
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


def recovery(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, ranking_csv: str | Path,
             recovery_csv: str | Path, threads: int = 1) -> pd.DataFrame:
    """Recovery statistics of one model: against its own plant (with targets), or, for a model
    without one, against every configured plant (the null)."""
    from . import recovery as rec

    settings, manifest = cfg["recovery"], read_manifest(manifest)
    plants = rec.plants_for(manifest, cfg["models"])
    ranking = pd.read_csv(ranking_csv)
    rankings = {p.name: rec.ranked_units(ranking, cfg["gating"]["metric"], p.band[0])
                for p in plants if p.spec.site == "neuron"}
    engine, _ = load_engine(cfg, manifest, threads)
    pairs = select_pairs(read_inputs(inputs_path), settings["split"], settings["max_pairs"])
    effects = pd.DataFrame([rec.pair_effects(engine, pair, plants, rankings)
                            for pair in tqdm(pairs, desc="recovery", unit="pair", mininterval=10)])
    own = manifest["name"] if manifest.get("planted") else None
    rows = rec.recovery_rows(manifest["name"], effects, plants, own, rankings, engine.sites.n_layers,
                             rec.Targets(**settings["targets"]), cfg["effects"]["min_abs_te"],
                             (cfg["effects"]["bootstrap_samples"], cfg["effects"]["ci"], cfg["effects"]["seed"]))
    rows += rec.behaviour_rows(manifest, own, len(pairs))
    write_table(rows, RECOVERY_COLUMNS, recovery_csv)
    log.info("recovery of %s on %d pairs:\n%s", manifest["name"], len(pairs), pd.DataFrame(rows).to_string(index=False))
    return pd.DataFrame(rows)


def recovery_figure(recovery_csvs: list[str], out: str | Path) -> None:
    """figures/recovery.png (and PDF) from every model's recovery.csv (analysis environment)."""
    from .recovery import plot_recovery, read_recovery

    plot_recovery([read_recovery(path) for path in recovery_csvs], Path(out).with_suffix(""))
