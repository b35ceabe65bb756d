"""Reviewer verification: recompute sampled result rows with the reference patcher, and check
that the files are the ones the provenance records.

Each sampled row is turned back into the intervention it states (pair, site, layer, positions,
units) from its own columns, ``inputs.jsonl``, the recorded config and (for unit sets chosen by
rank) ``neuron_ranking.csv`` alone, and recomputed by
:mod:`harmmed.review.reference`, which shares no code with the engine. A table passes when every
|ours - reference| of y_benign, y_harmful and y_patched is within the tolerance.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..datasets.prompts import EncodedPair, select_pairs
from ..io.fetch import sha256_file
from ..io.storage import write_table
from .provenance import config_digest
from .reference import Edit, ReferencePatcher

QUANTITIES = ("y_benign", "y_harmful", "y_patched")
VERIFICATION_COLUMNS = ["table", "row_key", "quantity", "ours", "reference", "abs_diff"]
# table label -> (file, site filter): the neuron table is checked at both unit sites
TABLES: dict[str, tuple[str, str | None]] = {
    "layer": ("layer.csv", None), "module": ("module.csv", None), "heatmap": ("heatmap.csv", None),
    "severed": ("severed.csv", None), "neuron": ("neuron.csv", "neuron"), "neuron_attn_dims": ("neuron.csv", "attn_dims"),
    "gating": ("gating.csv", None), "token": ("token.csv", None), "claims": ("claim_patches.csv", None),
}
_LABEL_COLUMNS = ("y_benign", "y_harmful", "y_patched", "effect", "layer_effect", "role")


class VerificationFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    warning: bool = False  # reported, never a failure: the run may still be reproducible


def config_checks(provenance: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[Check]:
    """A warning when the config now in force differs from the one the results were made with
    (the results are checked against their own config; they may be stale for the current one)."""
    recorded = provenance.get("config") or {}
    differ = sorted(key for key in set(recorded) | set(cfg) if key != "verify" and recorded.get(key) != cfg.get(key))
    return [Check("current config", True, "as recorded" if not differ else
                  f"differs from the recorded one in {', '.join(differ)}: the results may be stale for it",
                  warning=bool(differ))]


def environment_checks(provenance: Mapping[str, Any], repo: str | Path, installed: Mapping[str, str | None]
                       ) -> list[Check]:
    """Warnings, not failures: the recorded commit is not in this checkout's history (the
    results came from code this repository does not have), or a recorded package version
    differs from the installed one (recomputed rows may then differ within the tolerance)."""
    import subprocess

    checks = []
    commit = (provenance.get("git") or {}).get("commit")
    if commit:
        try:
            known = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{commit}^{{commit}}"],
                                   capture_output=True).returncode == 0
        except OSError:  # no git on this machine: the commit cannot be looked up
            known = False
        checks.append(Check("recorded commit", True, f"{commit} is in this repository's history" if known else
                            f"{commit} is not in this repository's history", warning=not known))
    recorded = provenance.get("versions") or {}
    differ = sorted(name for name in recorded if name in installed and recorded[name] != installed[name])
    checks.append(Check("package versions", True, "as recorded" if not differ else ", ".join(
        f"{name} {recorded[name]} recorded, {installed[name]} installed" for name in differ), warning=bool(differ)))
    return checks


def read_text_table(path: str | Path) -> pd.DataFrame:
    """Every cell as written (rows are keyed by their labels, compared as floats later)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def sample_rows(frame: pd.DataFrame, n_rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``n_rows`` rows (all of them when fewer), in file order."""
    if len(frame) <= n_rows:
        return frame
    chosen = np.sort(np.random.default_rng(seed).choice(len(frame), n_rows, replace=False))
    return frame.iloc[chosen]


def base_prompt(pair: EncodedPair, kind: str) -> list[int]:
    """The prompt a row patches: the benign one for NIE, the harmful one for NDE and gating."""
    return pair.benign_ids if kind == "NIE" else pair.harmful_ids


def position_set(pair: EncodedPair, name: str, kind: str) -> tuple[int, ...]:
    """Base-run positions a row's ``positions`` label names: all / post / last / request, or one
    index. Post-instruction positions are counted from the end (right-aligned), so they name the
    base's own template tokens when the two prompts differ in length; the request positions are
    the ones before them, and none when the lengths differ."""
    n = len(base_prompt(pair, kind))
    shift = n - len(pair.harmful_ids)
    post = tuple(q + shift for q in pair.post_positions)
    request = () if len(pair.harmful_ids) != len(pair.benign_ids) and pair.noise_span is None else tuple(
        q for q in range(n) if q not in set(post))
    sets = {"all": tuple(range(n)), "post": post, "last": (n - 1,), "request": request}
    return sets[name] if name in sets else (int(name),)


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """The ``window`` consecutive layers centred on ``layer``, clipped to the model."""
    return range(max(0, layer - window // 2), min(n_layers - 1, layer + window // 2) + 1)


@dataclass(frozen=True)
class RecordedSettings:
    """The settings of the recorded run that the recomputation needs to restate a row: the
    gating stage's and the claims stage's unit sets and the discovery pairs of the benign means."""

    gating_top_k: int
    gating_metric: str
    gating_seed: int
    gating_random_draws: int
    neuron_split: str
    neuron_max_pairs: int | None
    claims_seed: int
    claims_random_draws: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RecordedSettings:
        gating, neuron, claims = cfg["gating"], cfg["neuron"], cfg["claims"]
        return cls(gating["top_k"], gating["metric"], gating["seed"], gating["random_draws"], neuron["split"],
                   neuron["max_pairs"], claims["seed"], claims["random_draws"])


def ranked_units(ranking: pd.DataFrame, metric: str, site: str, k: int) -> tuple[int, ...]:
    """The k best-ranked units of ``site`` by ``metric``'s discovery ranking, sorted."""
    chosen = ranking[(ranking["metric"] == metric) & (ranking["site"] == site)]
    return tuple(sorted(chosen.nsmallest(k, "rank")["unit"].astype(int).tolist()))


def random_unit_sets(seed: int, draws: int, d_mlp: int, k: int) -> list[tuple[int, ...]]:
    """The seeded random k-unit sets a stage drew, in the order it drew them."""
    rng = np.random.default_rng(seed)
    return [tuple(sorted(rng.choice(d_mlp, k, replace=False).tolist())) for _ in range(draws)]


def gating_unit_sets(settings: RecordedSettings, ranking: pd.DataFrame, d_mlp: int
                     ) -> dict[str, list[tuple[int, ...]]]:
    """The unit sets the gating stage tested: top-k by the discovery ranking, and the seeded
    random draws (config gating.*)."""
    k, metric = settings.gating_top_k, settings.gating_metric
    return {"topk_neuron": [ranked_units(ranking, metric, "neuron", k)],
            "topk_attn_dims": [ranked_units(ranking, metric, "attn_dims", k)],
            "random_neuron": random_unit_sets(settings.gating_seed, settings.gating_random_draws, d_mlp, k)}


def claim_unit_set(settings: RecordedSettings, ranking: pd.DataFrame, d_mlp: int, row: Mapping[str, str]
                   ) -> tuple[int, ...] | None:
    """The final-layer units a C3 row of claim_patches.csv patched: the row's metric's top k by
    the discovery ranking, the row's seeded random draw (config claims.seed), or every unit. k is
    the row's ``units`` count."""
    if row["role"] == "c3_layer":
        return None
    k = int(row["units"])
    if row["role"] == "c3_topk":
        return ranked_units(ranking, row["metric"], "neuron", k)
    return random_unit_sets(settings.claims_seed, settings.claims_random_draws, d_mlp, k)[int(row["draw"])]


class RowRecomputer:
    """Recomputes rows of any mediation table with the reference patcher, caching clean outcomes
    and identical interventions (both metrics come from one pass)."""

    def __init__(self, patcher: ReferencePatcher, pairs: list[EncodedPair], settings: RecordedSettings,
                 ranking: pd.DataFrame | None) -> None:
        self.patcher, self.settings = patcher, settings
        self.pairs = {p.pair_id: p for p in pairs}
        self.all_pairs = pairs
        self.n_layers = patcher.sites.n_layers
        self.ranking = ranking
        self._clean: dict[tuple, dict[str, float]] = {}
        self._patched: dict[tuple, dict[str, float]] = {}
        self._means: dict[str, list[float]] = {}  # plain floats, so edits stay hashable

    def clean(self, prompt: list[int], target: list[int]) -> dict[str, float]:
        key = (tuple(prompt), tuple(target))
        if key not in self._clean:
            self._clean[key] = self.patcher.clean(prompt, target, [])[0]
        return self._clean[key]

    def benign_mean(self, site: str) -> list[float]:
        """Mean of a final-layer unit site over the discovery benign prompts' last positions."""
        if site not in self._means:
            final = self.n_layers - 1
            acts = [self.patcher.clean(p.benign_ids, p.target_ids, [(site, final)])[1][(site, final)][len(p.benign_ids) - 1]
                    for p in select_pairs(self.all_pairs, self.settings.neuron_split, self.settings.neuron_max_pairs)]
            self._means[site] = [float(v) for v in np.mean([a.double().cpu().numpy() for a in acts], axis=0)]
        return self._means[site]

    def intervention(self, table: str, row: Mapping[str, str], pair: EncodedPair) -> tuple[str, tuple[Edit, ...]]:
        """(base prompt: harmful or benign, the edits) that a row states."""
        layer = int(row["layer"]) if row.get("layer", "") != "" else self.n_layers - 1
        if table == "gating":
            site = "attn_dims" if row["units"].endswith("attn_dims") else "neuron"
            draw = int(row["draw"]) if row["draw"] != "" else 0
            units = gating_unit_sets(self.settings, self.ranking, self.patcher.sites.d_mlp)[row["units"]][draw]
            last = (len(pair.harmful_ids) - 1,)
            if row["intervention"] == "mean_ablate":
                mean = self.benign_mean(site)
                return "harmful", (Edit(site, layer, last, units, values=tuple(mean[u] for u in units)),)
            return "harmful", (Edit(site, layer, last, units),)
        base = "benign" if row["kind"] == "NIE" else "harmful"
        positions = position_set(pair, row["positions"], row["kind"])
        if table == "claims":  # a band of one or both module types, or final-layer units
            start, stop = (int(x) for x in row["layers"].split(":"))
            if row["site"] == "neuron":
                units = claim_unit_set(self.settings, self.ranking, self.patcher.sites.d_mlp, row)
                return base, (Edit("neuron", start, positions, units),)
            return base, tuple(Edit(site, k, positions) for site in row["site"].split("+") for k in range(start, stop))
        if table in ("neuron", "neuron_attn_dims"):
            if row["neuron"] != "":
                units = (int(row["neuron"]),)
            else:
                start, stop = (int(x) for x in row["block"].split(":"))
                units = tuple(range(start, stop))
            return base, (Edit(row["site"], layer, positions, units),)
        if table == "module":
            return base, tuple(Edit(row["site"], k, positions) for k in window_layers(layer, int(row["window"]),
                                                                                    self.n_layers))
        edits = [Edit(row["site"], layer, positions)]
        if table == "severed" and row["severed"] != "none":
            everywhere = tuple(range(len(base_prompt(pair, "NIE")) + len(pair.target_ids)))
            edits += [Edit(row["severed"], k, everywhere, frozen=True) for k in range(layer + 1, self.n_layers)]
        return base, tuple(edits)

    def recompute(self, table: str, row: Mapping[str, str]) -> dict[str, float]:
        pair = self.pairs[row["pair_id"]]
        metric = row["metric"]
        base, edits = self.intervention(table, row, pair)
        key = (pair.pair_id, base, edits)
        if key not in self._patched:
            prompts = {"harmful": pair.harmful_ids, "benign": pair.benign_ids}
            source = None if any(e.values is not None for e in edits) else prompts[
                "benign" if base == "harmful" else "harmful"]
            self._patched[key] = self.patcher.patched((prompts[base], pair.target_ids), source, edits)
        return {"y_benign": self.clean(pair.benign_ids, pair.target_ids)[metric],
                "y_harmful": self.clean(pair.harmful_ids, pair.target_ids)[metric],
                "y_patched": self._patched[key][metric]}


def row_key(row: Mapping[str, str]) -> str:
    return ";".join(f"{c}={v}" for c, v in row.items() if c not in _LABEL_COLUMNS)


def table_rows(results: Path) -> dict[str, pd.DataFrame | None]:
    """Every verified table's rows (of its site), or None for a stage this model skips."""
    out: dict[str, pd.DataFrame | None] = {}
    read: dict[str, pd.DataFrame] = {}  # neuron.csv holds two tables (its unit sites): read it once
    for table, (name, site) in TABLES.items():
        if not (results / name).is_file():  # a stage this model skips (skip_stages)
            out[table] = None
            continue
        if name not in read:
            read[name] = read_text_table(results / name)
        frame = read[name]
        out[table] = frame if site is None else frame[frame["site"] == site]
    return out


def verify_rows(tables: Mapping[str, pd.DataFrame | None], recomputer: RowRecomputer, n_rows: int, seed: int
                ) -> list[dict]:
    """Sample every table and compare each sampled row's outcomes with the reference."""
    planned = []
    for index, (table, frame) in enumerate(tables.items()):
        if frame is not None:
            planned += [(table, row) for _, row in sample_rows(frame, n_rows, seed + index).iterrows()]
    out = []
    for table, row in tqdm(planned, desc="verify", unit="row", mininterval=10):
        theirs = recomputer.recompute(table, row)
        for quantity in QUANTITIES:
            ours = float(row[quantity])
            out.append({"table": table, "row_key": row_key(row), "quantity": quantity, "ours": ours,
                        "reference": theirs[quantity], "abs_diff": abs(ours - theirs[quantity])})
    return out


def table_summary(rows: list[dict], tolerance: float, tables: Mapping[str, pd.DataFrame | None], ran: bool
                  ) -> list[dict]:
    """Per table: rows checked, max |diff| and a verdict: PASS, FAIL, EMPTY (the table has no rows,
    e.g. heatmaps of unpaired prompts), SKIPPED (the model skips the stage) or NOT RUN (the rows
    were not recomputed: other weights)."""
    frame = pd.DataFrame(rows, columns=VERIFICATION_COLUMNS)
    out = []
    for table, written in tables.items():
        part = frame[frame["table"] == table]
        if written is None:
            out.append({"table": table, "rows": 0, "max_abs_diff": float("nan"), "verdict": "SKIPPED",
                        "passed": True})
            continue
        worst = float(part["abs_diff"].max()) if len(part) else float("nan")
        empty = not len(written)
        verdict = "NOT RUN" if not ran else "EMPTY" if empty else "PASS" if worst <= tolerance else "FAIL"
        out.append({"table": table, "rows": part["row_key"].nunique(), "max_abs_diff": worst, "verdict": verdict,
                    "passed": verdict in ("PASS", "EMPTY")})
    return out


def file_checks(provenance: Mapping[str, Any], results: Path, manifest: Mapping[str, Any],
                weights_sha256: str) -> list[Check]:
    """The weights and every recorded input and result file against their provenance digests."""
    recorded = provenance["weights"]["sha256"]
    config_intact = config_digest(provenance["config"]) == provenance.get("config_sha256")
    checks = [Check("provenance config", config_intact, "matches its recorded config_sha256" if config_intact else
                    "provenance.json's config does not match its own config_sha256: the record was edited"),
              Check("weights sha256", weights_sha256 == recorded == manifest["sha256"],
                    f"on disk {weights_sha256}, provenance {recorded}, manifest {manifest['sha256']}")]
    for group, base in (("results", results), ("datasets", Path("."))):
        for name, digest in sorted(provenance[group].items()):
            path = base / name
            actual = sha256_file(path) if path.is_file() else "missing"
            checks.append(Check(f"sha256 {group}/{name}", actual == digest,
                                "matches provenance" if actual == digest else f"{actual}, provenance {digest}"))
    return checks


def same_bytes(name: str, ours: Path, recomputed: Path) -> Check:
    same = ours.read_bytes() == recomputed.read_bytes()
    return Check(name, same, "byte-identical" if same else f"{ours} differs from its recomputation")


def write_report(rows: list[dict], summary: list[dict], checks: list[Check], tolerance: float, model: str,
                 csv_path: Path, md_path: Path) -> str:
    """verification.csv and verification.md; returns the Markdown."""
    write_table(rows, VERIFICATION_COLUMNS, csv_path)
    lines = [f"# Verification: {model}", "",
             f"Rows recomputed by the reference implementation (harmmed.review.reference); tolerance {tolerance:g}.", "",
             "| table | rows checked | max abs diff | verdict |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {s['table']} | {s['rows']} | {s['max_abs_diff']:.3g} | {s['verdict']} |" for s in summary]
    lines += ["", "| check | verdict | detail |", "| --- | --- | --- |"]
    lines += [f"| {c.name} | {'FAIL' if not c.passed else 'WARN' if c.warning else 'PASS'} | {c.detail} |"
              for c in checks]
    failed = failures(summary, checks)
    lines += ["", f"**{'FAIL: ' + ', '.join(failed) if failed else 'PASS'}**", ""]
    text = "\n".join(lines)
    md_path.write_text(text, encoding="utf-8")
    return text


def failures(summary: list[dict], checks: list[Check]) -> list[str]:
    return [s["table"] for s in summary if not s["passed"]] + [c.name for c in checks if not c.passed]


PROVENANCE_KEYS = ("config", "config_sha256", "weights", "results", "datasets", "pairs_file")


def read_provenance(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise VerificationFailed(f"{path}: no provenance record; run the workflow's provenance rule first")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VerificationFailed(f"{path}: not a readable provenance record ({err}); it was edited or truncated, "
                                 "rerun the workflow's provenance rule") from None
    missing = [key for key in PROVENANCE_KEYS if not isinstance(record, dict) or key not in record]
    if missing:
        raise VerificationFailed(f"{path}: the provenance record lacks {', '.join(missing)}; it was edited, rerun the "
                                 "workflow's provenance rule")
    return record
