"""The run summary: every model's claims rows with their calibration marks (results/summary.csv,
byte-identical for the same tables) and the statistics x models Markdown (figures/summary.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from harmmed.io.storage import write_table
from harmmed.stats.calibration import calibration_table
from harmmed.stats.claims import CLAIM_COLUMNS, CLAIMS_FLOAT_FORMAT, write_claims_csv
from harmmed.stats.summary import SUMMARY_COLUMNS, read_summary, summary_markdown_table, verdict_cell

CFG = {"calibration": {"metric": "refusal"}}


def claims_rows(c1: str, c1_value: float) -> pd.DataFrame:
    """A small claims table: behaviour, C1 and a C4 that never reached its level."""
    return pd.DataFrame([
        ("B", "behaviour_present_TE[refusal]", 4.9, 3.6, 6.23, 0.5, "supported", 16, 0),
        ("C1", "late_minus_early_window_NIE_share[refusal]", c1_value, c1_value - 0.17, c1_value + 0.17, 0.0, c1,
         16, 0),
        ("C4", "probe_rel_depth_acc_ge_0.9", math.nan, math.nan, math.nan, 0.5, "not supported", math.nan, math.nan),
    ], columns=list(CLAIM_COLUMNS))


def write_run(root: Path, commit: str = "a" * 40) -> dict:
    """results/ of an unplanted model and a plant whose C1 is wrong: claims, calibration, provenance."""
    tables = {"base": claims_rows("supported", 0.36), "plant-early": claims_rows("inconclusive", 0.15)}
    expected = {"base": {}, "plant-early": {"C1": "not supported"}}
    paths: dict = {"claims": [], "provenance": []}
    for model, table in tables.items():
        write_claims_csv(table, root / "results" / model / "claims.csv")
        (root / "results" / model / "provenance.json").write_text(
            json.dumps({"model": model, "git": {"commit": commit, "dirty": False}}), encoding="utf-8")
        paths["claims"].append(str(root / "results" / model / "claims.csv"))
        paths["provenance"].append(str(root / "results" / model / "provenance.json"))
    calibration = calibration_table(tables, expected, "refusal")
    paths["calibration"] = root / "results" / "calibration.csv"
    write_table(calibration, list(calibration.columns), paths["calibration"], float_format=CLAIMS_FLOAT_FORMAT)
    return paths


def run_summary(root: Path, paths: dict) -> tuple[Path, Path]:
    from harmmed.stages import summary

    outputs = {"csv": root / "results" / "summary.csv", "md": root / "figures" / "summary.md"}
    summary(CFG, paths["claims"], paths["calibration"], paths["provenance"], outputs)
    return outputs["csv"], outputs["md"]


def test_summary_csv_has_every_claims_row_with_its_calibration_mark(tmp_path):
    csv, _ = run_summary(tmp_path, write_run(tmp_path))
    table = read_summary(csv)
    assert list(table.columns) == SUMMARY_COLUMNS
    assert list(table["model"]) == ["base"] * 3 + ["plant-early"] * 3
    marks = dict(zip(table["statistic"], table["calibration"]))
    assert marks["late_minus_early_window_NIE_share[refusal]"] == "not calibrated (wrong on plant-early)"
    assert marks["behaviour_present_TE[refusal]"].startswith("calibrated")
    assert marks["probe_rel_depth_acc_ge_0.9"] == "no ground truth"
    assert table.loc[2, "verdict"] == "not supported" and math.isnan(table.loc[2, "value"])
    assert "commit" not in csv.read_text() and "UTC" not in csv.read_text()


def test_summary_csv_is_byte_identical_for_the_same_tables_at_another_commit(tmp_path):
    paths = write_run(tmp_path)
    first = run_summary(tmp_path, paths)[0].read_bytes()
    paths = write_run(tmp_path, commit="b" * 40)
    csv, md = run_summary(tmp_path, paths)
    assert csv.read_bytes() == first
    assert "Commit: `bbbbbbbbbbbb`;" in md.read_text() and " UTC." in md.read_text()


def test_summary_markdown_is_statistics_by_models(tmp_path):
    _, md = run_summary(tmp_path, write_run(tmp_path))
    text = md.read_text()
    assert "| claim | statistic | base | plant-early | calibration |" in text
    assert ("| C1 | `late_minus_early_window_NIE_share[refusal]` | supported 0.36 (0.19 to 0.53) "
            "| inconclusive 0.15 (-0.02 to 0.32) | not calibrated (wrong on plant-early) |") in text
    assert "| C4 | `probe_rel_depth_acc_ge_0.9` | not supported | not supported | no ground truth |" in text


def test_a_statistic_one_model_lacks_is_a_dash() -> None:
    rows = [dict(model="a", claim="C1", statistic="s1", value=0.1, ci_low=-0.001, ci_high=0.2, threshold=0.0,
                 verdict="inconclusive", n_pairs=16, calibration="no ground truth"),
            dict(model="b", claim="C2", statistic="s2", value=0.3, ci_low=0.2, ci_high=0.4, threshold=0.0,
                 verdict="supported", n_pairs=16, calibration="no ground truth")]
    lines = summary_markdown_table(pd.DataFrame(rows, columns=SUMMARY_COLUMNS))
    assert lines[2] == "| C1 | `s1` | inconclusive 0.10 (0.00 to 0.20) | - | no ground truth |"
    assert lines[3] == "| C2 | `s2` | - | supported 0.30 (0.20 to 0.40) | no ground truth |"
    assert verdict_cell({"verdict": "not run", "value": math.nan, "ci_low": math.nan, "ci_high": math.nan}) == "not run"
    assert verdict_cell({"verdict": "supported", "value": 7.0, "ci_low": 2.0, "ci_high": 14.0}) == "supported 7 (2 to 14)"
    assert verdict_cell({"verdict": "supported", "value": 1.0, "ci_low": 0.97, "ci_high": 1.03}) == (
        "supported 1.00 (0.97 to 1.03)")


def test_different_commits_are_named_with_their_models(tmp_path):
    paths = write_run(tmp_path)
    record = json.loads(Path(paths["provenance"][1]).read_text())
    record["git"] = {"commit": "c" * 40, "dirty": True}
    Path(paths["provenance"][1]).write_text(json.dumps(record))
    _, md = run_summary(tmp_path, paths)
    assert "Commit: `aaaaaaaaaaaa` (base), `cccccccccccc-dirty` (plant-early);" in md.read_text()
