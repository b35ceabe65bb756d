"""Stages that run the model over prompt pairs: the layer, module, heatmap, neuron, gating,
claim, token, probe, screen, recovery and generation sweeps (sharded where the config asks)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..constants import GATING_COLUMNS, NEURON_COLUMNS, PROBE_COLUMNS, ROW_COLUMNS, SPARSITY_COLUMNS, UNIT_SITES
from ..prompts import EncodedPair, read_inputs, select_pairs
from ..shards import WHOLE, Shard, concat_tables, merge_json_objects, shard_offset, take_shard
from ..storage import atomic_path, load_engine, read_json, read_manifest, read_table, write_json, write_table

if TYPE_CHECKING:  # model stages import torch lazily, so figure/claims jobs run without it
    from ..engine import MediationEngine
from .base import ManifestSource, Paths, log


# ---------------------------------------------------------------- mediation stages
def _pairs(cfg: dict, inputs_path: str | Path, shard: Shard = WHOLE, cap: str = "max_pairs") -> list[EncodedPair]:
    """The layer-family stages' pairs: ``mediation.split``, at most ``mediation.<cap>`` of them."""
    med = cfg["mediation"]
    return take_shard(select_pairs(read_inputs(inputs_path), med["split"], med[cap], "mediation.split"), shard)


def merge_shards(shard_paths: list[str], out: str | Path) -> None:
    """One table (or heatmap-token JSON) from a sharded stage's parts, in shard order."""
    if Path(out).suffix == ".json":
        merge_json_objects(shard_paths, out)
    else:
        log.info("merged %d shards, %d rows into %s", len(shard_paths), concat_tables(shard_paths, out), out)


def _sweep(engine: MediationEngine, pairs: list[EncodedPair], cells_of, desc: str) -> list[dict]:
    from ..sweep import sweep_cells

    return sweep_cells(engine, pairs, cells_of, desc)


def mediate_layer(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, out_csv: str | Path,
                  severed_csv: str | Path, threads: int = 1, shard: Shard = WHOLE) -> None:
    """Residual layer curves and the severed paths. The severed paths' ``none`` rows are the
    layer curves' NIE(all) interventions, so they share one stage and the engine computes each
    once."""
    from .. import mediation

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
    from .. import mediation

    med = cfg["mediation"]
    engine, _ = load_engine(cfg, read_manifest(manifest), threads)
    rows = _sweep(engine, _pairs(cfg, inputs_path, shard, "module_max_pairs"), lambda i, pair: mediation.module_cells(
        pair, engine.sites.n_layers, med["module_positions"], med["windows"]), "module")
    write_table(rows, ROW_COLUMNS, module_csv)
    log.info("engine stats: %s", engine.stats)


def mediate_heatmap(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, heatmap_csv: str | Path,
                    tokens_json: str | Path, threads: int = 1, shard: Shard = WHOLE) -> None:
    """Layer x position NIE of the configured sites on the first heatmap pairs (Meng et al.'s
    three panels), and those pairs' tokens for the axis labels. Unpaired prompts have no
    position-aligned counterpart, so they get an empty table."""
    from .. import mediation

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


# ---------------------------------------------------------------- neuron and gating stages
def mediate_neuron(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, neuron_csv: str | Path,
                   threads: int = 1, shard: Shard = WHOLE) -> None:
    """Exact per-neuron NIE (final and extra layers) and blocks of adjacent neurons, per pair:
    the rows of ``shard``'s pairs (blocks at every layer on the first ``block_max_pairs``)."""
    from .. import neuron
    from ..sweep import sweep_pairs

    settings = cfg["neuron"]
    engine, _ = load_engine(cfg, read_manifest(manifest), threads)
    all_pairs = select_pairs(read_inputs(inputs_path), settings["split"], settings["max_pairs"], "neuron.split")
    plan = neuron.NeuronPlan(neuron.final_and_extra_layers(engine.sites.n_layers, settings["extra_layers"]),
                             settings["block_size"], settings["block_max_pairs"] or len(all_pairs))
    offset, pairs = shard_offset(len(all_pairs), shard), take_shard(all_pairs, shard)
    rows = sweep_pairs(engine, pairs, lambda i, pair, runs: neuron.pair_neuron_rows(
        engine, pair, runs, plan, every_layer_blocks=offset + i < plan.block_pairs), "neuron")
    write_table(rows, NEURON_COLUMNS, neuron_csv)
    log.info("neuron stage: %d pairs, engine stats %s", len(pairs), engine.stats)


def neuron_sparsity(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, neuron_csv: str | Path,
                    ranking_csv: str | Path, sparsity_csv: str | Path, threads: int = 1) -> None:
    """The discovery ranking of final-layer units over every pair of neuron.csv, and the
    sparsity curve (joint top-k vs random-k at the final layer) under that ranking."""
    from .. import neuron
    from ..sweep import sweep_pairs

    settings = cfg["neuron"]
    engine, _ = load_engine(cfg, read_manifest(manifest), threads)
    final = engine.sites.n_layers - 1
    frame = read_table(neuron_csv, ("positions", "block", "neuron"))
    ranking = pd.concat([neuron.rank_units(frame, site, final) for site in UNIT_SITES], ignore_index=True)
    pairs = select_pairs(read_inputs(inputs_path), settings["split"], settings["max_pairs"], "neuron.split")
    grid = neuron.k_grid(engine.sites.d_mlp, [settings["block_size"], cfg["gating"]["top_k"]])
    sparsity = sweep_pairs(engine, pairs, lambda i, pair, runs: neuron.sparsity_rows(
        engine, pair, runs, ranking, grid, settings["random_draws"], settings["seed"] + i), "sparsity")
    write_table(ranking, list(ranking.columns), ranking_csv)
    write_table(sparsity, SPARSITY_COLUMNS, sparsity_csv)
    log.info("sparsity: %d pairs, engine stats %s", len(pairs), engine.stats)


def gating(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, ranking_csv: str | Path, gating_csv: str | Path,
           units_json: str | Path, threads: int = 1) -> None:
    """Held-out test of the top-k final-layer neurons chosen on the discovery split."""
    from .. import neuron
    from ..sweep import sweep_pairs

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
    rows = sweep_pairs(engine, pairs, lambda i, pair, runs: neuron.gating_rows(
        engine, pair, runs, unit_sets, means), "gating")
    write_table(rows, GATING_COLUMNS, gating_csv)
    with atomic_path(units_json) as tmp:
        neuron.gating_units_json(tmp, final, unit_sets["topk_neuron"][0], means["neuron"], unit_sets["random_neuron"][0])
    log.info("gating stage: %d pairs, engine stats %s", len(pairs), engine.stats)


def mediate_claims(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, module_csv: str | Path,
                   ranking_csv: str | Path, patches_csv: str | Path, threads: int = 1) -> None:
    """Held-out interventions of the C1-C3 statistics, every component chosen on discovery."""
    from .. import claim_patches
    from ..sweep import sweep_pairs
    from ..claims import PATCH_COLUMNS

    settings, manifest = cfg["claims"], read_manifest(manifest)
    engine, _ = load_engine(cfg, manifest, threads)
    pairs = select_pairs(read_inputs(inputs_path), settings["split"], settings["max_pairs"], "claims.split")
    plan = claim_patches.build_plan(cfg, manifest, read_table(module_csv), pd.read_csv(ranking_csv))
    log.info("claim plan: %s", plan)
    rows = sweep_pairs(engine, pairs, lambda i, pair, runs: claim_patches.pair_rows(
        engine, pair, runs, plan), "claims")
    write_table(rows, PATCH_COLUMNS, patches_csv)
    log.info("claim patches: %d pairs, engine stats %s", len(pairs), engine.stats)


# ---------------------------------------------------------------- token and probe stages
def mediate_token(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, out_csv: str | Path,
                  threads: int = 1, pairs_path: str | Path | None = None, shard: Shard = WHOLE) -> None:
    """token.csv for the configured split (ROW_COLUMNS plus ``role``). ``pairs_path`` supplies
    the request texts for the roles; it defaults to ``prompts.pairs_file`` (the workflow passes
    the file prepare_prompts read)."""
    from .. import token
    from ..sweep import sweep

    engine, tokenizer = load_engine(cfg, read_manifest(manifest), threads)
    pairs = take_shard(select_pairs(read_inputs(inputs_path), cfg["token"]["split"], cfg["token"]["max_pairs"], "token.split"), shard)
    roles = token.pair_roles(tokenizer, pairs, token.pair_requests(pairs_path or cfg["prompts"]["pairs_file"]))
    rows = sweep(engine, pairs, lambda i, pair, runs, bar: token.token_rows(engine, pair, roles[pair.pair_id], runs, bar),
                 "token", [token.aligned_count(roles[p.pair_id]) for p in pairs])
    write_table(rows, ROW_COLUMNS + ["role"], out_csv)
    log.info("token: %d pairs, %d rows; engine stats: %s", len(pairs), len(rows), engine.stats)


def run_probe(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, out_csv: str | Path,
              threads: int = 1) -> pd.DataFrame:
    """probe.csv (per layer, real and shuffled labels) for the configured split."""
    from ..probe import probe_accuracy_by_layer, probe_features

    probe = cfg["probe"]
    engine, _ = load_engine(cfg, read_manifest(manifest), threads)
    pairs = select_pairs(read_inputs(inputs_path), probe["split"], probe["max_pairs"], "probe.split")
    features, labels, groups = probe_features(engine, pairs)
    df = probe_accuracy_by_layer(features, labels, groups, probe["folds"], probe["C"], probe["seed"], threads)
    write_table(df, PROBE_COLUMNS, out_csv)
    log.info("probe: %d pairs, %d layers, %d folds", len(pairs), len(features), int(df["folds"].max()))
    return df


# ---------------------------------------------------------------- screen_units
def screen_units(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, outputs: Paths,
                 threads: int = 1) -> None:
    """Attribution estimates of every MLP unit at every layer on the screened pairs, verified
    exactly on the first of them, and held-out sparsity and adjacency tests of the screen's
    ranking. ``outputs``: screen, screen_report, screen_heldout."""
    from .. import screen, screen_report

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


def generate_and_judge(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, gating_json: str | Path,
                       out_jsonl: str | Path, rates_csv: str | Path, threads: int = 1,
                       judge_manifest: str | Path | None = None, models_dir: str | Path = "data/models") -> None:
    """Generate every (prompt, condition), free the model, then judge. ``generation.max_prompts``
    caps the number of *pairs*; ``judge_manifest`` pins the judge's fetched weights."""
    from .. import generation as gen
    from ..judge import judge_name, make_judge

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


def recovery(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, ranking_csv: str | Path,
             recovery_csv: str | Path, threads: int = 1) -> pd.DataFrame:
    """Recovery statistics of one model: against its own plant (with targets), or, for a model
    without one, against every configured plant (the null)."""
    from .. import recovery as rec
    from ..constants import RECOVERY_COLUMNS
    from ..effects import Bootstrap
    from ..sweep import sweep_pairs

    settings, manifest = cfg["recovery"], read_manifest(manifest)
    plants = rec.plants_for(manifest, cfg["models"])
    ranking = pd.read_csv(ranking_csv)
    rankings = {p.name: rec.ranked_units(ranking, cfg["gating"]["metric"], p.band[0])
                for p in plants if p.spec.site == "neuron"}
    engine, _ = load_engine(cfg, manifest, threads)
    pairs = select_pairs(read_inputs(inputs_path), settings["split"], settings["max_pairs"])
    effects = pd.DataFrame(sweep_pairs(engine, pairs, lambda _i, pair, runs: [
        rec.pair_effects(engine, pair, runs, plants, rankings)], "recovery"))
    own = manifest["name"] if manifest.get("planted") else None
    rows = rec.recovery_rows(manifest["name"], effects, plants, own, rankings, engine.sites.n_layers,
                             rec.Targets(**settings["targets"]), cfg["effects"]["min_abs_te"],
                             Bootstrap.from_config(cfg))
    rows += rec.behaviour_rows(manifest, own, len(pairs))
    write_table(rows, RECOVERY_COLUMNS, recovery_csv)
    log.info("recovery of %s on %d pairs:\n%s", manifest["name"], len(pairs), pd.DataFrame(rows).to_string(index=False))
    return pd.DataFrame(rows)
