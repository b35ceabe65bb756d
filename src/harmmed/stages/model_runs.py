"""Stages that run the model over prompt pairs: the layer, module, heatmap, neuron, gating,
claim, token, probe, screen, recovery and generation sweeps (sharded where the config asks).

Every stage opens its model through :func:`model_stage` (checked weights, the section's pairs,
the engine's work logged at the end) and runs the one sweep loop of :mod:`harmmed.analyses.sweep`.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pandas as pd

from ..analyses import claim_patches, mediation, neuron, screen, token_roles
from ..analyses import generation as gen
from ..analyses import recovery as rec
from ..analyses.probe import probe_accuracy_by_layer, probe_features
from ..analyses.sweep import sweep, sweep_cells
from ..constants import (
    GATING_COLUMNS,
    NEURON_COLUMNS,
    PROBE_COLUMNS,
    RECOVERY_COLUMNS,
    ROW_COLUMNS,
    SPARSITY_COLUMNS,
    UNIT_SITES,
)
from ..io.shards import WHOLE, Shard
from ..io.storage import atomic_path, read_json, write_json, write_table
from ..models.judge import judge_name, make_judge
from ..stats import screen_report
from ..stats.claims import PATCH_COLUMNS
from ..stats.effects import Bootstrap
from ..stats.rates import write_rates
from .base import ManifestSource, ModelSettingError, Paths, log, model_stage, section_pairs


# ---------------------------------------------------------------- mediation stages
def mediate_layer(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, out_csv: str | Path,
                  severed_csv: str | Path, threads: int = 1, shard: Shard = WHOLE) -> None:
    """Residual layer curves and the severed paths. The severed paths' ``none`` rows are the
    layer curves' NIE(all) interventions, so they share one stage and the engine computes each
    once."""
    med = cfg["mediation"]
    with model_stage(cfg, manifest, threads, inputs_path, "mediation", shard=shard) as stage:
        n_layers = stage.engine.sites.n_layers
        rows = sweep_cells(stage.engine, stage.pairs, lambda pair: mediation.layer_cells(
            pair, n_layers, med["layer_positions"]) + mediation.severed_cells(pair, n_layers, med["severed_positions"]),
            "layer")
        write_table([row for row in rows if "severed" not in row], ROW_COLUMNS, out_csv)
        write_table([row for row in rows if "severed" in row], ROW_COLUMNS + ["severed"], severed_csv)


def mediate_module(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, module_csv: str | Path,
                   threads: int = 1, shard: Shard = WHOLE) -> None:
    med = cfg["mediation"]
    with model_stage(cfg, manifest, threads, inputs_path, "mediation", "module_max_pairs", shard) as stage:
        rows = sweep_cells(stage.engine, stage.pairs, lambda pair: mediation.module_cells(
            pair, stage.engine.sites.n_layers, med["module_positions"], med["windows"]), "module")
        write_table(rows, ROW_COLUMNS, module_csv)


def mediate_heatmap(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, heatmap_csv: str | Path,
                    tokens_json: str | Path, threads: int = 1, shard: Shard = WHOLE) -> None:
    """Layer x position NIE of the configured sites on the first heatmap pairs (Meng et al.'s
    three panels), and those pairs' tokens for the axis labels. Unpaired prompts have no
    position-aligned counterpart, so they get an empty table."""
    med = cfg["mediation"]
    with model_stage(cfg, manifest, threads, inputs_path, "mediation", shard=shard, first=_heatmap_pairs(cfg)) as stage:
        rows = sweep_cells(stage.engine, stage.pairs, lambda pair: mediation.heatmap_cells(
            pair, stage.engine.sites.n_layers, med["heatmap"]["sites"]), "heatmap")
        write_table(rows, ROW_COLUMNS, heatmap_csv)
        write_json({p.pair_id: stage.tokenizer.convert_ids_to_tokens(p.harmful_ids) for p in stage.pairs}, tokens_json)


def _heatmap_pairs(cfg: dict) -> int:  # noise mode corrupts the harmful prompt itself: positions align
    return 0 if cfg["prompts"]["mode"] == "unpaired" else cfg["mediation"]["heatmap"]["n_pairs"]


# ---------------------------------------------------------------- neuron and gating stages
def mediate_neuron(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, neuron_csv: str | Path,
                   threads: int = 1, shard: Shard = WHOLE) -> None:
    """Exact per-neuron NIE (final and extra layers) and blocks of adjacent neurons, per pair:
    the rows of ``shard``'s pairs (blocks at every layer on the first ``block_max_pairs``)."""
    settings = cfg["neuron"]
    with model_stage(cfg, manifest, threads, inputs_path, "neuron", shard=shard) as stage:
        engine = stage.engine
        plan = neuron.NeuronPlan(neuron.final_and_extra_layers(engine.sites.n_layers, settings["extra_layers"]),
                                 settings["block_size"], settings["block_max_pairs"] or stage.n_section_pairs)
        rows = sweep(engine, stage.pairs, lambda step: neuron.pair_neuron_rows(
            engine, step.pair, step.runs, plan, every_layer_blocks=stage.offset + step.index < plan.block_pairs),
            "neuron")
        write_table(rows, NEURON_COLUMNS, neuron_csv)


def neuron_sparsity(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, ranking_csv: str | Path,
                    sparsity_csv: str | Path, threads: int = 1) -> None:
    """The sparsity curve (joint top-k vs random-k at the final layer) under the discovery
    ranking: it feeds the per-model figures only."""
    settings = cfg["neuron"]
    with model_stage(cfg, manifest, threads, inputs_path, "neuron", also_check=("gating",)) as stage:
        engine = stage.engine
        ranking = pd.read_csv(ranking_csv)
        grid = neuron.k_grid(engine.sites.d_mlp, [settings["block_size"], cfg["gating"]["top_k"]])
        sparsity = sweep(engine, stage.pairs, lambda step: neuron.sparsity_rows(
            engine, step.pair, step.runs, ranking, grid, settings["random_draws"], settings["seed"] + step.index),
            "sparsity")
        write_table(sparsity, SPARSITY_COLUMNS, sparsity_csv)


def gating(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, ranking_csv: str | Path, gating_csv: str | Path,
           units_json: str | Path, threads: int = 1) -> None:
    """Held-out test of the top-k final-layer neurons chosen on the discovery split."""
    settings = cfg["gating"]
    with model_stage(cfg, manifest, threads, inputs_path, "gating") as stage:
        engine = stage.engine
        final = engine.sites.n_layers - 1
        discovery = section_pairs(cfg, inputs_path, "neuron")
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
        rows = sweep(engine, stage.pairs, lambda step: neuron.gating_rows(engine, step.pair, step.runs, unit_sets,
                                                                          means), "gating")
        write_table(rows, GATING_COLUMNS, gating_csv)
        with atomic_path(units_json) as tmp:
            neuron.gating_units_json(tmp, final, unit_sets["topk_neuron"][0], means["neuron"],
                                     unit_sets["random_neuron"][0])


def mediate_claims(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, ranking_csv: str | Path,
                   patches_csv: str | Path, threads: int = 1) -> None:
    """Held-out interventions of the C1-C3 statistics, every component chosen on discovery; and
    the depth profile on the module sweep's discovery pairs, which chooses the origin band."""
    with model_stage(cfg, manifest, threads, inputs_path, "claims") as stage:
        plan = claim_patches.build_plan(claim_patches.ClaimSettings.from_config(cfg), stage.manifest,
                                        pd.read_csv(ranking_csv))
        log.info("claim plan: %s", plan)
        discovery = section_pairs(cfg, inputs_path, "mediation", "module_max_pairs")
        rows = sweep(stage.engine, discovery, lambda step: claim_patches.selection_rows(
            stage.engine, step.pair, step.runs, plan), "claims (discovery profile)")
        rows += sweep(stage.engine, stage.pairs, lambda step: claim_patches.pair_rows(
            stage.engine, step.pair, step.runs, plan), "claims")
        write_table(rows, PATCH_COLUMNS, patches_csv)


# ---------------------------------------------------------------- token and probe stages
def mediate_token(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, out_csv: str | Path,
                  threads: int = 1, pairs_path: str | Path | None = None, shard: Shard = WHOLE) -> None:
    """token.csv for the configured split (ROW_COLUMNS plus ``role``). ``pairs_path`` supplies
    the request texts for the roles; it defaults to ``prompts.pairs_file`` (the workflow passes
    the file prepare_prompts read)."""
    requests = token_roles.pair_requests(pairs_path or cfg["prompts"]["pairs_file"])
    with model_stage(cfg, manifest, threads, inputs_path, "token", shard=shard) as stage:
        roles = token_roles.pair_roles(stage.tokenizer, stage.pairs, requests)
        rows = sweep(stage.engine, stage.pairs, lambda step: token_roles.token_rows(
            stage.engine, step.pair, roles[step.pair.pair_id], step.runs, step.progress),
            "token", [token_roles.aligned_count(roles[p.pair_id]) for p in stage.pairs])
        write_table(rows, ROW_COLUMNS + ["role"], out_csv)


def run_probe(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, out_csv: str | Path,
              threads: int = 1) -> pd.DataFrame:
    """probe.csv (per layer, real and shuffled labels) for the configured split."""
    probe = cfg["probe"]
    with model_stage(cfg, manifest, threads, inputs_path, "probe") as stage:
        features, labels, groups = probe_features(stage.engine, stage.pairs)
        df = probe_accuracy_by_layer(features, labels, groups, probe["folds"], probe["C"], probe["seed"], threads)
        write_table(df, PROBE_COLUMNS, out_csv)
    return df


# ---------------------------------------------------------------- screen_units
def screen_units(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, outputs: Paths,
                 threads: int = 1) -> None:
    """Attribution estimates of every MLP unit at every layer on the screened pairs, verified
    exactly on the first of them, and held-out sparsity and adjacency tests of the screen's
    ranking. ``outputs``: screen, screen_report, screen_heldout."""
    settings = screen.ScreenSettings.from_config(cfg)
    with model_stage(cfg, manifest, threads, inputs_path, "screen") as stage:
        engine = stage.engine
        screens, sets_of = screen.screen_pairs(engine, stage.pairs, settings)
        table = screen.screen_table(screens, sets_of)
        report = screen_report.layer_report(table, screen.outcome_table(screens), settings.top_k,
                                            engine.sites.n_layers)
        selections = screen.heldout_selections(screen.discovery_ranking(screens, settings.heldout_positions),
                                               settings, settings.seed)
        heldout = screen.heldout_sweep(engine, section_pairs(cfg, inputs_path, "screen.held_out"), selections,
                                       settings)
        write_table(table, screen.SCREEN_COLUMNS, outputs["screen"])
        write_table(report, screen_report.REPORT_COLUMNS, outputs["screen_report"])
        write_table(heldout, screen.HELDOUT_COLUMNS, outputs["screen_heldout"])
        log.info("screen: %d pairs screened (%d verified), %d held-out rows", len(screens),
                 min(len(screens), settings.verify_pairs), len(heldout))


def generate_and_judge(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, gating_json: str | Path,
                       out_jsonl: str | Path, rates_csv: str | Path, threads: int = 1,
                       judge_manifest: str | Path | None = None, models_dir: str | Path = "data/models") -> None:
    """Generate every (prompt, condition), free the model, then judge. ``generation.max_prompts``
    caps the number of *pairs*; ``judge_manifest`` pins the judge's fetched weights."""
    settings = cfg["generation"]
    conditions = gen.conditions_from_gating(gen.read_gating(gating_json))
    with model_stage(cfg, manifest, threads, inputs_path, "generation", "max_prompts") as stage:
        engine, tokenizer, pairs = stage.engine, stage.tokenizer, stage.pairs
        _check_generation_fits(settings["max_new_tokens"], pairs, stage.manifest)
        gen.check_conditions(conditions, engine.sites.n_layers, engine.sites.d_mlp)
        records = gen.generate_records(engine, tokenizer, pairs, conditions, settings["max_new_tokens"])
        by_id = {p.pair_id: p for p in pairs}
        prompts = [gen.request_text(tokenizer, r["prompt_ids"], by_id[r["prompt_id"]].post_positions)
                   for r in records]
    del stage, engine
    gc.collect()  # the chat model is no longer needed; a model judge may need the memory
    record = read_json(judge_manifest) if judge_manifest else None
    judged = gen.judge_records(make_judge(settings["judge"], models_dir, record), records, prompts)
    rates = gen.generation_rates(judged, cfg["effects"]["ci"])
    with atomic_path(out_jsonl) as tmp:
        gen.write_records(judged, tmp)
    with atomic_path(rates_csv) as tmp:
        write_rates(rates, tmp)
    log.info("generation rates (%s):\n%s", judge_name(settings["judge"]), rates.to_string(index=False))


def _check_generation_fits(max_new_tokens: int, pairs: list, manifest: dict) -> None:
    """The longest prompt plus every new token must fit the model's positions."""
    limit = manifest.get("max_positions")
    longest = max(max(len(p.harmful_ids), len(p.benign_ids)) for p in pairs)
    if limit and longest + max_new_tokens > limit:
        raise ModelSettingError(f"generation.max_new_tokens: {max_new_tokens} new tokens after a prompt of {longest} "
                                f"exceed the {limit} positions of {manifest['name']}; set it to at most {limit - longest}")


def recovery(cfg: dict, manifest: ManifestSource, inputs_path: str | Path, ranking_csv: str | Path,
             recovery_csv: str | Path, threads: int = 1) -> pd.DataFrame:
    """Recovery statistics of one model: against its own plant (with targets), or, for a model
    without one, against every configured plant (the null)."""
    settings = cfg["recovery"]
    with model_stage(cfg, manifest, threads, inputs_path, "recovery") as stage:
        engine, manifest = stage.engine, stage.manifest
        plants = rec.plants_for(manifest, cfg["models"])
        ranking = pd.read_csv(ranking_csv)
        rankings = {p.name: rec.ranked_units(ranking, cfg["gating"]["metric"], p.band[0])
                    for p in plants if p.spec.site == "neuron"}
        effects = pd.DataFrame(sweep(engine, stage.pairs, lambda step: [
            rec.pair_effects(engine, step.pair, step.runs, plants, rankings)], "recovery"))
        own = manifest["name"] if manifest.get("planted") else None
        rows = rec.recovery_rows(manifest["name"], effects, plants, own, rankings, engine.sites.n_layers,
                                 rec.Targets(**settings["targets"]), cfg["effects"]["min_abs_te"],
                                 Bootstrap.from_config(cfg))
        rows += rec.behaviour_rows(manifest, own, len(stage.pairs))
        write_table(rows, RECOVERY_COLUMNS, recovery_csv)
    log.info("recovery of %s on %d pairs:\n%s", manifest["name"], len(stage.pairs),
             pd.DataFrame(rows).to_string(index=False))
    return pd.DataFrame(rows)
