"""``make compare``: a user's results/ compared with the small tables of a reference run
(reference/, written by :mod:`.reference_run`), so a reviewer on another machine learns in one table
whether their run reproduces ours.

What is compared (docs/verification.md):

- the token ids fed to the model (inputs.jsonl) and the weight digests of a downloaded model:
  exactly, a difference fails (it is another experiment);
- a fine-tuned model's weight digests: reported, never failing (training rounds differently on
  different CPUs, so its weights, and its numbers, differ there);
- verdicts (the claims', the calibration's and the summary's, the recovery's pass): exactly, a
  difference fails;
- numbers: within absolute TOLERANCES; one outside is reported, not failing;
- a file or row the reference has and the results lack: fails.

``python -m harmmed.review.compare [RESULTS] [REFERENCE]`` compares (exit 1 on a failure);
``python -m harmmed.review.compare --write-reference [RESULTS] [REFERENCE]`` writes the reference.
Torch-free: it reads tables only.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..io.fetch import sha256_file
from .reference_run import (
    DIGESTS,
    GRID_MODEL_FILES,
    MODEL_FILES,
    SUMS,
    ReferenceError,
    read_sums,
    source_bytes,
    write_reference,
)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
FINETUNE = "finetune"

# Absolute tolerances (docs/verification.md). A claim value (a TE share, the behaviour row's mean
# TE, C4's relative depth; C4's count of layers moves beyond it by any change) within 0.05; a
# bootstrap CI bound within 0.10, since a percentile bound moves with single pairs' values; a
# probe accuracy within 0.05 (3 of 64 prompts);
# a per-pair outcome of the layer and module tables within 1e-3 in its metric's units: ten times
# make verify's tolerance between two implementations on one machine, room for another CPU's
# rounding that still catches another model or pair.
SHARE, CI_BOUND, ACCURACY, OUTCOME = 0.05, 0.10, 0.05, 1e-3
STATISTIC_TOLERANCES = {"value": SHARE, "ci_low": CI_BOUND, "ci_high": CI_BOUND}
OUTCOME_TOLERANCES = dict.fromkeys(("y_benign", "y_harmful", "y_patched", "effect"), OUTCOME)
ROW_KEY = ("pair_id", "metric", "kind", "site", "layer", "window", "positions")
LISTED = 5  # differing rows listed per file and column; more are one line with their count

FAIL, DIFFERS = "FAIL", "differs"
TABLE_COLUMNS = ("status", "model", "file", "row", "quantity", "expected", "found")


@dataclass(frozen=True)
class TableSpec:
    """How one table is compared: its row key, the verdict columns that must match, and the
    numeric columns with their absolute tolerance; other shared columns are compared as text and
    a difference is reported."""

    key: tuple[str, ...]
    verdicts: tuple[str, ...] = ()
    tolerances: Mapping[str, float] = field(default_factory=dict)


TABLES: dict[str, TableSpec] = {
    "claims.csv": TableSpec(("claim", "statistic"), ("verdict",), STATISTIC_TOLERANCES),
    "summary.csv": TableSpec(("model", "statistic"), ("verdict", "calibration"), STATISTIC_TOLERANCES),
    "calibration.csv": TableSpec(("statistic", "model"), ("expected", "verdict", "correct", "ground_truth"),
                                 STATISTIC_TOLERANCES),
    "recovery.csv": TableSpec(("model", "plant", "statistic"), ("pass",), STATISTIC_TOLERANCES),
    "probe.csv": TableSpec(("layer", "condition"), (), dict.fromkeys(("accuracy", "ci_low", "ci_high"), ACCURACY)),
    "layer.csv": TableSpec(ROW_KEY, (), OUTCOME_TOLERANCES),
    "module.csv": TableSpec(ROW_KEY, (), OUTCOME_TOLERANCES),
}


@dataclass(frozen=True)
class Finding:
    """One line of the table of differences."""

    status: str
    model: str
    file: str
    row: str
    quantity: str
    expected: str
    found: str


def _number(text: str) -> float:
    try:
        return float(text) if text != "" else math.nan
    except ValueError:
        return math.nan


def _keyed(frame: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    """The table indexed by its key, a repeated key numbered by its occurrence."""
    frame = frame.copy()
    frame["#"] = frame.groupby(list(key), sort=False).cumcount().astype(str)
    return frame.set_index([*key, "#"])


def _row_label(index: Any, key: Sequence[str]) -> str:
    """The row's key without the model (its own column) and a first occurrence's number."""
    values = index if isinstance(index, tuple) else (index,)
    parts = [v for k, v in zip([*key, "#"], values) if k != "model" and not (k == "#" and v == "0")]
    return " ".join(str(p) for p in parts if p != "")


def _model_of(index: Any, key: Sequence[str], default: str) -> str:
    return str(index[list(key).index("model")]) if "model" in key else default


def _collapse(findings: list[Finding], counted: int) -> list[Finding]:
    """At most LISTED findings of one file and column; the rest as one line with their count."""
    if len(findings) <= LISTED:
        return findings
    first = findings[0]
    return [*findings[:LISTED - 1],
            Finding(first.status, first.model, first.file, f"{len(findings) - LISTED + 1} more of {counted} rows",
                    first.quantity, "", "")]


def compare_tables(expected: pd.DataFrame, found: pd.DataFrame, spec: TableSpec, model: str,
                   file: str) -> tuple[list[Finding], int]:
    """The differences between two tables read as text; and how many numbers differ but lie
    within their tolerance."""
    lost = [c for c in expected.columns if c not in found.columns]
    if lost:
        return [Finding(FAIL, model, file, "", "columns", ", ".join(lost), "missing")], 0
    ours, theirs = _keyed(expected, spec.key), _keyed(found, spec.key)

    def finding(status: str, index: Any, quantity: str, x: str, y: str) -> Finding:
        return Finding(status, _model_of(index, spec.key, model), file, _row_label(index, spec.key), quantity, x, y)

    findings = _collapse([finding(FAIL, i, "row", "present", "missing") for i in ours.index if i not in theirs.index],
                         len(ours))
    findings += _collapse([finding(DIFFERS, i, "row", "absent", "added") for i in theirs.index if i not in ours.index],
                          len(theirs))
    shared = ours.index.intersection(theirs.index, sort=False)
    within = 0
    for column in [c for c in ours.columns if c in theirs.columns and c != "#"]:
        a, b = ours.loc[shared, column], theirs.loc[shared, column]
        outside: list[tuple[float, Finding]] = []  # (|diff|, finding) of the numbers outside tolerance
        texts = []
        for index in shared[(a != b).to_numpy()]:
            if column not in spec.tolerances:
                status = FAIL if column in spec.verdicts else DIFFERS
                texts.append(finding(status, index, column, a[index], b[index]))
                continue
            tol, dx, dy = spec.tolerances[column], _number(a[index]), _number(b[index])
            if (math.isnan(dx) and math.isnan(dy)) or abs(dx - dy) <= tol:
                within += 1
            else:
                outside.append((math.inf if math.isnan(dx - dy) else abs(dx - dy),
                                finding(DIFFERS, index, column, f"{a[index]} ± {tol:g}", b[index])))
        findings += _collapse(texts, len(shared)) + _worst(outside, len(shared), spec.tolerances.get(column, 0.0))
    return findings, within


def _worst(outside: list[tuple[float, Finding]], counted: int, tol: float) -> list[Finding]:
    """Numbers outside tolerance: each one when few, else one line with their count and the
    largest difference (a fine-tuned model trained elsewhere differs in every row)."""
    if len(outside) <= LISTED:
        return [f for _, f in outside]
    diff, worst = max(outside, key=lambda pair: pair[0])
    return [Finding(DIFFERS, worst.model, worst.file, f"{len(outside)} of {counted} rows", worst.quantity,
                    f"within {tol:g}", f"max |diff| {diff:.3g} ({worst.row})")]


def _first_difference(a: Any, b: Any) -> tuple[str, str]:
    """Short texts for two values; for two lists, the first index where they differ."""
    if isinstance(a, list) and isinstance(b, list):
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return tuple(f"[{i}] {v[i]}" if i < len(v) else f"{len(v)} ids" for v in (a, b))
    return str(a), str(b)


def compare_inputs(expected: bytes, found: bytes, model: str, file: str) -> list[Finding]:
    """inputs.jsonl record by record (keyed by pair_id), field by field; every difference fails."""
    def records(data: bytes) -> dict[str, dict]:
        return {str(r["pair_id"]): r for r in map(json.loads, data.decode().splitlines()) if r}

    ours, theirs = records(expected), records(found)
    findings = [Finding(FAIL, model, file, pair, "pair", "present", "missing") for pair in ours if pair not in theirs]
    for pair in (p for p in ours if p in theirs):
        for name in sorted(set(ours[pair]) | set(theirs[pair])):
            if ours[pair].get(name) != theirs[pair].get(name):
                findings.append(Finding(FAIL, model, file, pair, name,
                                        *_first_difference(ours[pair].get(name), theirs[pair].get(name))))
    return _collapse(findings, len(ours))


def _flat_digests(digests: Mapping[str, Any]) -> dict[str, Any]:
    """The digests with each model file's as ``files/<name>``."""
    return {**{k: v for k, v in digests.items() if k != "files"},
            **{f"files/{k}": v for k, v in digests.get("files", {}).items()}}


def compare_digests(expected: bytes, found: bytes, model: str, file: str) -> list[Finding]:
    """Manifest digests exactly; a fine-tuned model's weight digests are reported, not failing."""
    ours, theirs = json.loads(expected), json.loads(found)
    a, b = _flat_digests(ours), _flat_digests(theirs)
    finetuned = ours.get("source") == FINETUNE
    findings = []
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            weights = name == "sha256" or name.endswith(WEIGHT_SUFFIXES)
            status = DIFFERS if finetuned and weights else FAIL
            quantity = f"{name} (fine-tuned weights: reported only)" if status == DIFFERS else name
            findings.append(Finding(status, model, file, "", quantity, str(a.get(name, "absent"))[:16],
                                    str(b.get(name, "absent"))[:16]))
    return findings


@dataclass
class Comparison:
    """What compare found: missing files (one line each), the differences, and counts."""

    missing: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    identical: int = 0
    compared: int = 0
    within: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.missing) or any(f.status == FAIL for f in self.findings)


def compare_runs(results: Path, reference: Path) -> Comparison:
    """Every file reference/SHA256SUMS lists against its counterpart under ``results``."""
    out = Comparison()
    sums = read_sums(reference)
    if not results.is_dir():
        raise ReferenceError(f"{results}: no such folder; pass the folder the workflow wrote (results)")
    absent_models = {Path(r).parts[0] for r in sums
                     if len(Path(r).parts) > 1 and not (results / Path(r).parts[0]).is_dir()}
    for model in sorted(absent_models):
        count = sum(1 for r in sums if Path(r).parts[0] == model)
        out.missing.append(f"missing: {results / model}/ (the reference has {count} files of model {model})")
    for relative, digest in sums.items():
        parts = Path(relative).parts
        model, name = (parts[0], parts[-1]) if len(parts) > 1 else ("", parts[0])
        if model in absent_models:
            continue
        stored = reference / relative
        if not stored.is_file() or sha256_file(stored) != digest:
            out.missing.append(f"reference damaged: {stored} does not match {reference / SUMS}")
            continue
        data = source_bytes(results, relative)
        if data is None:
            source = "manifest.json" if name == DIGESTS else name
            out.missing.append(f"missing: {results / Path(relative).with_name(source)} (the reference has {stored})")
            continue
        out.compared += 1
        if hashlib.sha256(data).hexdigest() == digest:
            out.identical += 1
            continue
        out.findings += _compare_file(stored, data, model, relative, out)
    return out


def _text_table(source: Path | io.BytesIO) -> pd.DataFrame:
    """Every cell as text, as written: numbers are parsed only where a tolerance applies."""
    return pd.read_csv(source, dtype=str, keep_default_na=False)


def _compare_file(stored: Path, data: bytes, model: str, relative: str, out: Comparison) -> list[Finding]:
    name = Path(relative).name
    if name == DIGESTS:
        return compare_digests(stored.read_bytes(), data, model, relative)
    if name == "inputs.jsonl":
        return compare_inputs(stored.read_bytes(), data, model, relative)
    findings, within = compare_tables(_text_table(stored), _text_table(io.BytesIO(data)), TABLES[name], model,
                                      relative)
    out.within += within
    return findings


def render(comparison: Comparison, results: Path, reference: Path) -> str:
    """The report: missing files one line each, the table of differences, then one verdict line."""
    lines = [f"compare: {results} against {reference}: {comparison.compared} files compared, "
             f"{comparison.identical} byte-identical, {comparison.within} numbers differ within tolerance"]
    lines += comparison.missing
    if comparison.findings:
        rows = [TABLE_COLUMNS, *((f.status, f.model, f.file, f.row, f.quantity, f.expected, f.found)
                                 for f in comparison.findings)]
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(TABLE_COLUMNS))]
        for n, row in enumerate(rows):
            lines.append("| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |")
            if n == 0:
                lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    failures = sum(f.status == FAIL for f in comparison.findings) + len(comparison.missing)
    reported = sum(f.status == DIFFERS for f in comparison.findings)
    if comparison.failed:
        lines.append(f"compare: FAIL ({failures} failing line{'s' if failures != 1 else ''} (missing files, verdicts, "
                     f"inputs or downloaded weights); {reported} reported differences)")
    else:
        lines.append(f"compare: OK (every verdict, input and base-model digest agrees; "
                     f"{reported} reported differences)")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harmmed.review.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", default="results", type=Path)
    parser.add_argument("reference", nargs="?", default="reference", type=Path)
    parser.add_argument("--write-reference", action="store_true",
                        help="copy the run's small tables from RESULTS into REFERENCE (make reference)")
    parser.add_argument("--grid", action="store_true",
                        help="with --write-reference: keep only each model's claims, recovery and digests "
                             "(make reference-grid)")
    parser.add_argument("--config", type=Path, default=None,
                        help="with --write-reference: the config whose models the run must be")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if (args.grid or args.config) and not args.write_reference:
        parser.error("--grid and --config go with --write-reference")
    try:
        if args.write_reference:
            written = write_reference(args.results, args.reference, GRID_MODEL_FILES if args.grid else MODEL_FILES,
                                      args.config)
            print(f"reference: {len(written)} files and {SUMS} written to {args.reference}")
            return 0
        comparison = compare_runs(args.results, args.reference)
    except (ReferenceError, OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(render(comparison, args.results, args.reference))
    return 1 if comparison.failed else 0


if __name__ == "__main__":
    sys.exit(main())
