"""Stages that read result tables only (no torch): every figure, the claims table, the
calibration grid, the run summary and the merge of a sharded stage's tables. Figure modules
(matplotlib) are imported by the figure stages only, so the claims stage runs where only the
tables are."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from ..datasets.prompts import read_inputs
from ..io.shards import concat_tables, merge_json_objects
from ..io.storage import atomic_path, read_json, read_jsonl, read_manifest, read_table, write_table
from ..stats.calibration import calibrated_marks, calibration_table, read_recovery, unmet_ground_truth
from ..stats.claims import CLAIMS_FLOAT_FORMAT, c4_row, compute_claims, read_claims, write_claims_csv
from ..stats.claims_report import claims_markdown
from ..stats.effects import Bootstrap
from ..stats.ranking import RANKING_COLUMNS, discovery_ranking
from ..stats.rates import read_rates
from ..stats.screen_report import pair_outcomes, read_screen
from ..stats.summary import SUMMARY_COLUMNS, summary_markdown, summary_table
from .base import ManifestSource, Paths, log


# ---------------------------------------------------------------- figures and claims
def _boot(cfg: dict) -> dict[str, Any]:
    return Bootstrap.from_config(cfg).kwargs()


def figures(cfg: dict, inputs: Paths, out_dir: str | Path) -> None:
    """Layer, module, severed-path curves and the heatmaps. ``inputs``: manifest, layer, module,
    severed, heatmap, inputs (inputs.jsonl), tokens (heatmap_tokens.json)."""
    from ..figures import plotting

    manifest, boot, out_dir = read_manifest(inputs["manifest"]), _boot(cfg), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plotting.plot_layer_curves(read_table(inputs["layer"]), manifest, out_dir / "layer_curves", **boot)
    plotting.plot_module_curves(read_table(inputs["module"]), manifest, out_dir / "module_curves", **boot)
    plotting.plot_severed(read_table(inputs["severed"]), manifest, out_dir / "severed_paths", **boot)
    rows = read_jsonl(inputs["inputs"])
    plotting.plot_heatmaps(read_table(inputs["heatmap"]), rows, read_json(inputs["tokens"]), manifest,
                           out_dir / "heatmap")


def cross_model_figure(cfg: dict, manifests: list[str], layer_csvs: list[str], out: str | Path) -> None:
    from ..figures import plotting

    named = {read_manifest(m)["name"]: (m, csv) for m, csv in zip(manifests, layer_csvs)}
    plotting.plot_cross_model({n: read_table(c) for n, (_, c) in named.items()},
                              {n: read_manifest(m) for n, (m, _) in named.items()},
                              Path(out).with_suffix(""), **_boot(cfg))


def claims(cfg: dict, inputs: Paths, outputs: Paths) -> None:
    """claims.csv of one model. ``inputs``: manifest, patches (claim_patches.csv), probe;
    ``outputs``: csv. claims.md is written by the calibration stage, which knows every model."""
    manifest, thresholds, boot = read_manifest(inputs["manifest"]), cfg["claims"]["thresholds"], Bootstrap.from_config(cfg)
    probe = c4_row(pd.read_csv(inputs["probe"]), int(manifest["n_layers"]), float(cfg["probe"]["relative_level"]),
                   float(thresholds["C4_probe_depth"]))
    patches = read_table(inputs["patches"], ("positions", "layers", "units", "draw"))
    table = compute_claims(patches, thresholds, boot, float(cfg["effects"]["min_abs_te"]), probe)
    write_claims_csv(table, outputs["csv"])


def calibration(cfg: dict, claims_csvs: list[str], outputs: Paths, manifests: list[str] | None = None,
                recovery_csvs: list[str] | None = None) -> None:
    """Every model's claims against its expected verdicts. ``claims_csvs`` (and ``manifests``)
    follow the config's model order; ``outputs``: csv, png, md (every model's claims.md, in model
    order); ``recovery_csvs``: the planted fine-tunes' recovery tables. A fine-tune that failed
    its behaviour check, or whose own recovery rows say its trained components do not carry the
    mechanism, has no ground truth to calibrate against: its verdicts are recorded with the
    reason (yellow in the grid), never counted."""
    names = [spec["name"] for spec in cfg["models"]]
    expected = {spec["name"]: spec.get("expected_verdicts") or {} for spec in cfg["models"]}
    unestablished: dict[str, str] = {}
    for name, path in zip(names, manifests or []):
        behaviour = read_json(path).get("behaviour")
        if behaviour is not None and not behaviour["passed"] and expected[name]:
            unestablished[name] = "behaviour check failed"
    for path in recovery_csvs or []:
        recovery = read_recovery(path)
        for name in sorted(set(recovery["model"]) & {n for n, e in expected.items() if e}):
            unmet = unmet_ground_truth(recovery, name)
            if unmet and name not in unestablished:
                unestablished[name] = f"own recovery missed {', '.join(unmet)}"
    for name, reason in unestablished.items():
        log.warning("%s: ground truth not established (%s), left out of the calibration", name, reason)
    _write_calibration(dict(zip(names, (read_claims(path) for path in claims_csvs))), expected,
                       cfg["calibration"]["metric"], outputs, unestablished)


def _write_calibration(tables: Mapping[str, pd.DataFrame], expected: Mapping[str, Mapping[str, str]], metric: str,
                       outputs: Paths, unestablished: Mapping[str, str]) -> pd.DataFrame:
    """calibration.csv, the grid figure and every model's claims.md (``outputs``: csv, png, md
    in the order of ``tables``), each written whole or not at all."""
    from ..figures.calibration import plot_calibration

    table = calibration_table(tables, expected, metric, unestablished)
    marks = calibrated_marks(table)
    write_table(table, list(table.columns), outputs["csv"], float_format=CLAIMS_FLOAT_FORMAT)
    plot_calibration(table, list(tables), outputs["png"])
    for (name, claims_table), md in zip(tables.items(), outputs["md"]):
        with atomic_path(md) as tmp:
            tmp.write_text(claims_markdown(claims_table, f"Claims: {name}", marks), encoding="utf-8")
    return table


def summary(cfg: dict, claims_csvs: list[str], calibration_csv: str | Path, provenances: list[str],
            outputs: Paths) -> None:
    """results/summary.csv and figures/summary.md from every model's claims.csv (``claims_csvs``
    in config order, each under results/<model>/) and the run's calibration.csv. The CSV carries
    no commit or time, so runs with the same numbers write the same bytes; the Markdown header
    names the commit each model's ``provenances`` record and when it was written."""
    names = [Path(path).parent.name for path in claims_csvs]
    marks = calibrated_marks(pd.read_csv(calibration_csv, dtype=str, keep_default_na=False))
    table = summary_table(dict(zip(names, (read_claims(path) for path in claims_csvs))), marks)
    write_table(table, SUMMARY_COLUMNS, outputs["csv"], float_format=CLAIMS_FLOAT_FORMAT)
    header = [f"Commit: {_run_commits(provenances)}; written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
              f"Calibration marks from results/calibration.csv (plants judged on the "
              f"`{cfg['calibration']['metric']}` rows). The same rows: results/summary.csv."]
    with atomic_path(outputs["md"]) as tmp:
        tmp.write_text(summary_markdown(table, header), encoding="utf-8")


def _run_commits(provenances: list[str]) -> str:
    """The commit the provenance records hold (``-dirty`` when the tree was), or every distinct one
    with its models when the models' results came from different checkouts."""
    from ..review.provenance import short_commit

    models: dict[str, list[str]] = {}
    for path in provenances:
        record = read_json(path)
        models.setdefault(short_commit(record.get("git") or {}), []).append(record["model"])
    if len(models) == 1:
        return f"`{next(iter(models))}`"
    return ", ".join(f"`{commit}` ({', '.join(names)})" for commit, names in models.items())


def neuron_ranking(manifest: ManifestSource, neuron_csv: str | Path, ranking_csv: str | Path) -> None:
    """The discovery ranking of final-layer units over every pair of neuron.csv (no model is run)."""
    final = int(read_manifest(manifest)["n_layers"]) - 1
    ranking = discovery_ranking(read_table(neuron_csv, ("positions", "block", "neuron")), final)
    write_table(ranking, RANKING_COLUMNS, ranking_csv)


def neuron_figures(cfg: dict, inputs: Paths, out_dir: str | Path) -> None:
    """Neuron distribution, sparsity, block-vs-sum and gating figures. ``inputs``: manifest,
    neuron, ranking, sparsity, gating."""
    from ..figures import neuron as neuron_plots

    manifest, boot, out_dir = read_manifest(inputs["manifest"]), _boot(cfg), Path(out_dir)
    neuron_df = read_table(inputs["neuron"], ("positions", "block", "neuron"))
    neuron_plots.plot_neuron_distribution(pd.read_csv(inputs["ranking"]), manifest, out_dir / "neuron_distribution")
    neuron_plots.plot_sparsity(read_table(inputs["sparsity"], ()), manifest, out_dir / "sparsity", **boot)
    neuron_plots.plot_block_vs_sum(neuron_df, manifest, out_dir / "block_vs_sum")
    neuron_plots.plot_gating(read_table(inputs["gating"], ()), manifest, out_dir / "gating", **boot)


def token_figures(manifest: ManifestSource, token_csv: str | Path, inputs_path: str | Path, out: str | Path) -> None:
    """The token heatmaps from token.csv (analysis environment, no torch)."""
    from ..figures.tokens import plot_token_heatmap

    token_df = read_table(token_csv, ("positions", "pair_id"))
    plot_token_heatmap(token_df, read_inputs(inputs_path), read_manifest(manifest), out)


def probe_figure(cfg: dict, manifest: ManifestSource, probe_csv: str | Path, out: str | Path) -> None:
    """The probe accuracy figure from probe.csv (analysis environment)."""
    from ..figures.probe import plot_probe

    plot_probe(pd.read_csv(probe_csv), read_manifest(manifest), out, relative_level=float(cfg["probe"]["relative_level"]))


def screen_figures(cfg: dict, inputs: Paths, out_dir: str | Path) -> None:
    """The screen's four figures. ``inputs``: manifest, screen, screen_report, screen_heldout."""
    from ..figures import screen as screen_plots

    manifest, out_dir, held = read_manifest(inputs["manifest"]), Path(out_dir), cfg["screen"]["held_out"]
    screen = read_screen(inputs["screen"])
    heldout = read_table(inputs["screen_heldout"], ("positions", "units", "draw"))
    outcomes = pair_outcomes(read_table(inputs["screen_report"]))
    screen_plots.plot_screen_scatter(screen, manifest, out_dir / "screen_scatter")
    screen_plots.plot_screen_heatmap(screen, outcomes, manifest, held["positions"], out_dir / "screen_heatmap")
    screen_plots.plot_screen_sparsity(heldout, manifest, out_dir / "screen_sparsity")
    screen_plots.plot_screen_adjacency(heldout, manifest, held["block_size"], out_dir / "screen_adjacency")


def generation_figure(manifest: ManifestSource, rates_csv: str | Path, out: str | Path) -> None:
    """``out`` is the PNG path; the PDF is written beside it."""
    from ..figures.generation import plot_generation_rates

    plot_generation_rates(read_rates(rates_csv), read_manifest(manifest), Path(out).with_suffix(""))


def recovery_figure(recovery_csvs: list[str], out: str | Path) -> None:
    """figures/recovery.png (and PDF) from every model's recovery.csv (analysis environment)."""
    from ..figures.recovery import plot_recovery

    plot_recovery([read_recovery(path) for path in recovery_csvs], Path(out).with_suffix(""))


def merge_shards(shard_paths: list[str], out: str | Path) -> None:
    """One table (or heatmap-token JSON) from a sharded stage's parts, in shard order."""
    if Path(out).suffix == ".json":
        merge_json_objects(shard_paths, out)
    else:
        log.info("merged %d shards, %d rows into %s", len(shard_paths), concat_tables(shard_paths, out), out)
