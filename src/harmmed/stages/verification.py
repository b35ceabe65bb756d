"""Stages for reviewers: provenance, the independent verification, and bundles redrawn
without a model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from ..config import model_spec
from ..datasets.prompts import read_inputs
from ..io.storage import atomic_path, read_json, read_manifest, write_json
from .base import ManifestSource, error_line, log
from .prepare import prepare_prompts
from .tables import claims, figures, generation_figure, neuron_figures, probe_figure, screen_figures, token_figures


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
    from ..io.fetch import portable_path
    from ..review.provenance import build_provenance

    record = build_provenance(cfg, read_manifest(manifest), [pairs_file, *dataset_files], result_files, repo, threads)
    record["pairs_file"] = portable_path(pairs_file)
    write_json(record, out)


def verify(cfg: dict, results_dir: str | Path, verification_csv: str | Path, verification_md: str | Path,
           threads: int = 1) -> None:
    """Recompute sampled rows with the reference patcher and check every recorded digest, the
    input encoding and the claims table; write the report, then fail if anything failed."""
    from ..models.checks import weights_digest
    from ..review import verify as checks_of
    from ..review.provenance import versions

    results = Path(results_dir)
    record = checks_of.read_provenance(results / "provenance.json")
    recorded_cfg, manifest, paths = record["config"], read_manifest(results / "manifest.json"), _result_paths(results)
    digest = weights_digest(manifest["path"])
    checks = checks_of.file_checks(record, results, manifest, digest)
    checks += checks_of.environment_checks(record, Path(__file__).resolve().parents[3], versions())
    checks += checks_of.config_checks(record, cfg)
    for check in checks:
        if check.warning:
            log.warning("%s: %s", check.name, check.detail)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # A recomputation that cannot run (a file changed, a table no longer parses) is a failed
        # check in the report, beside the digest checks that say why; never a bare traceback.
        checks.append(_recomputed("inputs.jsonl re-encoded from the prompt file", results / "inputs.jsonl",
                                  tmp / "inputs.jsonl", lambda: prepare_prompts(
                                      recorded_cfg, manifest, record["pairs_file"], tmp / "inputs.jsonl",
                                      tmp / "dropped.csv")))
        checks.append(_recomputed("claims.csv recomputed from the tables", results / "claims.csv", tmp / "claims.csv",
                                  lambda: claims(recorded_cfg, paths, {"csv": tmp / "claims.csv"})))
    rows, tables = [], checks_of.table_rows(results)
    ran = digest == manifest["sha256"] == record["weights"]["sha256"]  # other weights cannot reproduce a row
    if recorded_cfg["prompts"]["mode"] == "noise":
        ran = False
        checks.append(checks_of.Check("rows recomputed", False, "noise mode: the reference draws no embedding noise"))
    if ran:
        recomputer = _recomputer(cfg, recorded_cfg, manifest, results, threads)  # its errors are its own
        try:
            rows = checks_of.verify_rows(tables, recomputer, cfg["verify"]["n_rows"], cfg["verify"]["seed"])
        except (ValueError, KeyError, IndexError) as err:
            ran = False
            checks.append(checks_of.Check("rows recomputed", False, f"the tables could not be read back: "
                                                                    f"{error_line(err)}"))
    summary = checks_of.table_summary(rows, cfg["verify"]["tolerance"], tables, ran)
    with atomic_path(verification_csv) as tmp_csv, atomic_path(verification_md) as tmp_md:
        text = checks_of.write_report(rows, summary, checks, cfg["verify"]["tolerance"], manifest["name"],
                                      tmp_csv, tmp_md)
    log.info("verification:\n%s", text)
    failed = checks_of.failures(summary, checks)
    if failed:
        raise checks_of.VerificationFailed(f"verification of {results} failed: {', '.join(failed)} (see the log)")


def _recomputer(cfg: dict, recorded_cfg: dict, manifest: dict, results: Path, threads: int):
    """The reference patcher on this machine's device (this config) in the recorded dtype."""
    from ..models.loading import open_model
    from ..review.reference import ReferencePatcher
    from ..review.verify import RecordedSettings, RowRecomputer

    device = model_spec(cfg, manifest["name"])["device"]
    model, _ = open_model(manifest, manifest["dtype"], device, threads)
    return RowRecomputer(ReferencePatcher(model, manifest["refusal_token_ids"]), read_inputs(results / "inputs.jsonl"),
                         RecordedSettings.from_config(recorded_cfg), pd.read_csv(results / "neuron_ranking.csv"))


def _recomputed(name: str, ours: Path, recomputed: Path, recompute):
    """The check that ``recompute()`` writes ``recomputed`` byte-identical to ``ours``."""
    from ..review.verify import Check, same_bytes

    try:
        recompute()
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        return Check(name, False, f"could not be recomputed: {error_line(err)}")
    return same_bytes(name, ours, recomputed)


def bundle(provenance_path: str | Path, calibration_csv: str | Path, out: str | Path) -> None:
    """results-<model>-<commit>.tar.gz (+ .sha256): the tables, provenance, claims and the run's
    calibration table."""
    from ..review.bundle import pack

    pack(Path(provenance_path), Path(out), Path(calibration_csv))


def figures_from_bundle(bundle_path: str | Path, out_dir: str | Path) -> Path:
    """Check and unpack a bundle, then redraw every figure of the stages the model ran, claims.md
    (with the calibration marks of the run's calibration.csv) and the report from its tables
    alone (with the config its provenance records); no model, no torch. Returns the folder."""
    from ..review.bundle import CALIBRATION, BundleError, unpack, write_report
    from ..stats.calibration import calibrated_marks
    from ..stats.claims import read_claims
    from ..stats.claims_report import claims_markdown

    root = unpack(Path(bundle_path), Path(out_dir))
    if not (root / "results" / CALIBRATION).is_file():
        raise BundleError(f"{bundle_path}: no results/{CALIBRATION} (a bundle from before it was packed); "
                          "rebuild it with make bundle")
    marks = calibrated_marks(pd.read_csv(root / "results" / CALIBRATION, dtype=str, keep_default_na=False))
    for results in sorted(p for p in (root / "results").iterdir() if p.is_dir()):
        cfg, paths = read_json(results / "provenance.json")["config"], _result_paths(results)
        figs, drawn = root / "figures" / results.name, []  # drawn: the stages whose figures were redrawn
        if Path(paths["heatmap"]).is_file():  # absent for a model that skips figures
            figures(cfg, paths, figs)
            neuron_figures(cfg, paths, figs)
            probe_figure(cfg, paths["manifest"], paths["probe"], figs / "probe_accuracy")
            drawn.append("figures")
        if Path(paths["screen"]).is_file():  # absent for a model that skips screen
            screen_figures(cfg, paths, figs)
            drawn.append("screen")
        if Path(paths["token"]).is_file():  # absent for a model that skips mediate_token
            token_figures(paths["manifest"], paths["token"], paths["inputs"], figs / "token_heatmap")
            drawn.append("mediate_token")
        if Path(paths["rates"]).is_file():  # absent for a model that skips generate
            generation_figure(paths["manifest"], paths["rates"], figs / "generation_rates.png")
            drawn.append("generate")
        claims(cfg, paths, {"csv": figs / "claims.csv"})
        if (figs / "claims.csv").read_bytes() != (results / "claims.csv").read_bytes():
            raise BundleError(f"{bundle_path}: claims recomputed from the tables differ from the bundled claims.csv")
        (figs / "claims.csv").unlink()
        with atomic_path(figs / "claims.md") as tmp:
            tmp.write_text(claims_markdown(read_claims(results / "claims.csv"), f"Claims: {results.name}", marks),
                           encoding="utf-8")
        write_report(figs, results.name, drawn)
    return root
