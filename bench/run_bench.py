#!/usr/bin/env python
"""Benchmark of the exact patching engine against the plain path, printed as a Markdown table.

    .venv/bin/python bench/run_bench.py [--model default|tiny|both] [--pairs N] [--repeats R]
                                        [--plain-sample S] [--threads T] [--rows ...] [--write]

For each stage's workload (all NIE: benign base, harmful source) it times ``engine.patch`` with
``fast=True`` (median of R repeats) and with ``fast=False`` (the plain path: one full forward pass
per intervention, no reuse), extrapolating the plain path linearly from a seeded random sample of
S interventions per pair. It also counts work in token-layers (tokens x decoder layers executed)
against a lower bound on what any exact method must recompute, checks that both paths agree on
the sampled interventions, and records peak memory. See bench/README.md for every column.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "smollm2-135m-instruct"
MODEL_DIR = ROOT / "data" / "models" / MODEL_NAME / "hf"
RESULTS_DIR = ROOT / "results" / MODEL_NAME
MANIFEST = RESULTS_DIR / "manifest.json"
INPUTS = RESULTS_DIR / "inputs.jsonl"
OUT_FILE = ROOT / "bench" / "results.md"

ROWS = ("heatmap", "layer", "module", "neuron")
ROW_LABELS = {
    "heatmap": "residual layer x position sweep",
    "layer": "layer curves (residual, post + last)",
    "module": "module sweep (attn/mlp, windows 1,5, all)",
    "neuron": "final-layer neuron sweep (all)",
}
TOLERANCE = 1e-4  # max |engine - plain| allowed on the sampled interventions
SAMPLE_SEED = 20240601


# ---------------------------------------------------------------------------- setup
def need_workflow_outputs(missing: str) -> None:
    sys.exit(
        f"run_bench: {missing}.\n"
        "The default model and its prompt pairs come from the workflow: run `make replicate` first, "
        "or at least its download_model and prepare_prompts stages, e.g.\n"
        f"  .venv/bin/snakemake --cores 2 --configfile config/config.yaml "
        f"results/{MODEL_NAME}/inputs.jsonl\n"
        "(or benchmark only the tiny model: --model tiny)."
    )


def load_default(n_pairs: int):
    """SmolLM2 from the workflow's safetensors checkpoint, its refusal ids and N minimal pairs."""
    from harmmed.datasets.prompts import read_inputs, select_pairs
    from harmmed.models.loading import load_model

    if not (MODEL_DIR / "config.json").is_file():
        need_workflow_outputs(f"no converted model at {MODEL_DIR.relative_to(ROOT)}")
    if not MANIFEST.is_file():
        need_workflow_outputs(f"no manifest at {MANIFEST.relative_to(ROOT)}")
    refusal_ids = json.loads(MANIFEST.read_text(encoding="utf-8")).get("refusal_token_ids")
    if not refusal_ids:
        need_workflow_outputs(f"{MANIFEST.relative_to(ROOT)} has no refusal_token_ids")
    if not INPUTS.is_file():
        need_workflow_outputs(f"no encoded prompt pairs at {INPUTS.relative_to(ROOT)}")
    pairs = [p for p in read_inputs(INPUTS) if len(p.harmful_ids) == len(p.benign_ids)]
    chosen = select_pairs(pairs, "discovery", n_pairs)  # the workflow's choice of pairs
    if len(chosen) < n_pairs:
        chosen = select_pairs(pairs, "all", n_pairs)
    model, _ = load_model(MODEL_DIR, dtype="float32", device="cpu")
    return model, refusal_ids, chosen


def load_tiny(n_pairs: int):
    """tests/tiny.py's random llama and random token pairs shaped like the real minimal pairs:
    a shared prefix, two differing tokens, a shared suffix and a shared target."""
    import numpy as np

    from harmmed.datasets.prompts import EncodedPair

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import VOCAB, tiny_model

    rng = np.random.default_rng(0)
    prompt_len, n_target, diff_at = 40, 10, 29
    pairs = []
    for i in range(n_pairs):
        harmful = rng.integers(5, VOCAB, prompt_len)
        benign = harmful.copy()
        for q in (diff_at, diff_at + 1):
            benign[q] = (harmful[q] + 1 + rng.integers(0, VOCAB - 6)) % (VOCAB - 5) + 5
        pairs.append(EncodedPair(
            pair_id=f"tiny-{i:03d}", split="discovery", category="tiny",
            harmful_ids=harmful.tolist(), benign_ids=benign.tolist(),
            target_ids=rng.integers(5, VOCAB, n_target).tolist(),
            post_positions=list(range(prompt_len - 6, prompt_len)),
        ))
    return tiny_model("llama"), [0, 1, 2], pairs


# ---------------------------------------------------------------------------- workloads
def row_interventions(row: str, pair, n_layers: int, d_mlp: int) -> list:
    """The interventions one stage patches for one pair, NIE direction only."""
    from harmmed.analyses.mediation import heatmap_cells, layer_cells, module_cells
    from harmmed.analyses.pairs import position_sets
    from harmmed.patching.patches import Patch

    if row == "heatmap":
        cells = heatmap_cells(pair, n_layers, ["residual"])
    elif row == "layer":
        cells = layer_cells(pair, n_layers, ["post", "last"])
    elif row == "module":
        cells = module_cells(pair, n_layers, ["all"], [1, 5])
    elif row == "neuron":
        every = position_sets(pair)["all"]
        return [(Patch("neuron", n_layers - 1, every, units=(u,)),) for u in range(d_mlp)]
    else:
        raise ValueError(row)
    return [iv for cell, iv in cells if cell.kind == "NIE"]


def changed_positions(patch, base, source) -> list[int]:
    """Positions where a patch's value differs from the base run's own value."""
    if patch.value_from == "base":  # frozen at the base run's clean value: changes nothing by itself
        return []
    offset = source.prompt_len - base.prompt_len
    key = (patch.site, patch.layer)
    src = source.acts[key][[q + offset for q in patch.positions]]
    own = base.acts[key][list(patch.positions)]
    if patch.units is not None:
        src, own = src[:, list(patch.units)], own[:, list(patch.units)]
    differs = (src != own).flatten(1).any(dim=1).tolist()
    return [q for q, d in zip(patch.positions, differs) if d]


def lower_bound(intervention, base, source, n_layers: int) -> tuple[int, int, bool]:
    """Token-layers an exact method must recompute for one intervention, the scored LM-head
    positions whose logits can change, and whether it is a no-op (no changed value can reach
    the outcome). See bench/README.md for the derivation.

    With t the first changed position, L the lowest block that must run (l + 1 for a residual
    patch at l, l for any other site), P the prompt length and S the number of fed tokens
    (prompt + target - 1: the last target token is scored, never fed):

    * every patch in the final block (and not its residual output): only the changed patched
      positions >= P - 1 matter, one token-layer and one LM-head position each (the final block
      moves nothing across positions, and only outputs from P - 1 on reach scored logits);
    * otherwise: blocks L .. n-2 recompute every token from t to the end, (S - t) each, and the
      final block and the LM head only the positions whose logits are scored, S - max(t, P - 1).
    """
    P, S, top = base.prompt_len, base.ids.shape[1], n_layers - 1
    changed = [(p, changed_positions(p, base, source)) for p in intervention]
    moved = sorted({q for _, qs in changed for q in qs})
    if all(p.site != "residual" and p.layer == top for p in intervention):
        live = [q for q in moved if P - 1 <= q < S]
        return len(live), len(live), not live
    if not moved:
        return 0, 0, True
    t = moved[0]
    scored = S - max(t, P - 1)
    lowest = min(p.layer + 1 if p.site == "residual" else p.layer
                 for p in intervention if any(q >= t for q in p.positions))
    if lowest > top:  # the final residual output itself: no block runs, only its scored positions matter
        return 0, max(scored, 0), scored <= 0
    return (S - t) * (top - lowest) + scored, scored, False


# ---------------------------------------------------------------------------- memory
_LIBC = None


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS baselines are honest."""
    global _LIBC
    gc.collect()
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRSS:
    """Peak resident set size over a block. On Linux the kernel's high-water mark (VmHWM) is
    reset at entry (/proc/self/clear_refs, "5"), so the peak is the block's own; elsewhere it
    falls back to getrusage's ru_maxrss, which is the process's lifetime peak."""

    exact = None  # whether VmHWM could be reset

    def __enter__(self) -> PeakRSS:
        release_free_memory()
        self.baseline_kb = _status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
            PeakRSS.exact = self.baseline_kb is not None
        except OSError:
            PeakRSS.exact = False
        return self

    def __exit__(self, *exc) -> None:
        if PeakRSS.exact:
            self.peak_kb = _status_kb("VmHWM")
        else:
            import resource

            self.peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.baseline_kb = self.baseline_kb or 0

    @property
    def delta_mb(self) -> float:
        return max(0, self.peak_kb - self.baseline_kb) / 1024


# ---------------------------------------------------------------------------- measuring
@dataclass
class RowResult:
    model: str
    row: str
    n_pairs: int
    n_interventions: int = 0
    n_identity: int = 0
    engine_times: list[float] = field(default_factory=list)
    engine_passes: int = 0
    engine_tl: int = 0  # patched passes + prefix passes, clean runs excluded
    prefix_tl: int = 0
    bound_tl: int = 0
    bound_unembed: int = 0  # scored LM-head positions whose logits can change
    plain_sampled: int = 0
    plain_time_sampled: float = 0.0
    plain_time_extrap: float = 0.0
    plain_tl: int = 0
    plain_tl_sampled_counted: int = 0
    plain_tl_sampled_expected: int = 0
    engine_unembed: int = 0  # positions sent through the LM head (patched + prefix passes)
    engine_low_rank: int = 0  # of those, rows the low-rank neuron head answered (no full unembedding)
    plain_unembed: int = 0  # plain path, exact count for all interventions
    max_abs_diff: float = 0.0
    engine_peak_mb: float = 0.0
    plain_peak_mb: float = 0.0

    @property
    def engine_time(self) -> float:
        return statistics.median(self.engine_times)


class UnembedCounter:
    """Counts the positions that go through the LM head (batch rows x kept positions), read off
    its input with a hook that changes nothing."""

    def __init__(self, model) -> None:
        from harmmed.models.hooks import HookSet

        self.count = 0
        self._hooks = HookSet()
        self._hooks.on_input(model.get_output_embeddings(), self._add)

    def _add(self, x) -> None:
        self.count += x.shape[0] * x.shape[1]

    def close(self) -> None:
        self._hooks.remove()


def measure_row(engine, model_label: str, row: str, pairs, runs, repeats: int, plain_sample: int,
                row_index: int, unembed: UnembedCounter, max_row_seconds: float) -> RowResult:
    import numpy as np

    sites = engine.sites
    n_layers = sites.n_layers
    work = [row_interventions(row, pair, n_layers, sites.d_mlp) for pair in pairs]
    result = RowResult(model_label, row, len(pairs))
    for ivs, (harmful, benign) in zip(work, runs):
        result.n_interventions += len(ivs)
        bounds = [lower_bound(iv, benign, harmful, n_layers) for iv in ivs]
        result.bound_tl += sum(b for b, _, _ in bounds)
        result.bound_unembed += sum(h for _, h, _ in bounds)
        result.n_identity += sum(identity for _, _, identity in bounds)
        result.plain_tl += len(ivs) * benign.ids.shape[1] * n_layers
        result.plain_unembed += len(ivs) * benign.n_target

    # Engine: every repeat starts from clean runs with no prefix caches, so it pays its own
    # prefix passes; the clean runs themselves (shared by both paths) are not timed.
    outputs = None
    first_outputs = None
    with PeakRSS() as peak:
        for _ in range(repeats):
            for _, benign in runs:
                engine.prefix_caches(benign).clear()
            before = dict(engine.stats)
            unembed.count = 0
            start = time.perf_counter()
            outputs = [engine.patch(benign, harmful, ivs) for ivs, (harmful, benign) in zip(work, runs)]
            result.engine_times.append(time.perf_counter() - start)
            result.engine_passes = engine.stats["forward_passes"] - before["forward_passes"]
            result.engine_tl = engine.stats["token_layers"] - before["token_layers"]
            result.prefix_tl = sum(sum(engine.prefix_caches(benign)) for _, benign in runs if benign.cache is None) * n_layers
            result.engine_unembed = unembed.count
            result.engine_low_rank = engine.stats["low_rank_head_rows"] - before["low_rank_head_rows"]
            first_outputs = first_outputs or outputs
            if sum(result.engine_times) >= max_row_seconds:
                break  # long rows: fewer repeats (the table says how many ran)
    result.engine_peak_mb = peak.delta_mb
    for a, b in zip(first_outputs, outputs):  # repeats must give the same answers
        if not np.array_equal(a, b):
            print(f"  warning: [{model_label}] {row}: engine repeats differ by up to "
                  f"{float(np.max(np.abs(a - b))):.2g}", file=sys.stderr)
    for _, benign in runs:
        engine.prefix_caches(benign).clear()

    # Plain path on a seeded sample of each pair's interventions, same inputs, same process.
    unembed.count = 0
    expected_unembed = 0
    with PeakRSS() as peak:
        for pair_index, (ivs, (harmful, benign), out) in enumerate(zip(work, runs, outputs)):
            rng = np.random.default_rng([SAMPLE_SEED, row_index, pair_index])
            size = min(plain_sample, len(ivs))
            sample = sorted(rng.choice(len(ivs), size=size, replace=False).tolist())
            before = engine.stats["token_layers"]
            start = time.perf_counter()
            plain = engine.patch(benign, harmful, [ivs[i] for i in sample], fast=False)
            elapsed = time.perf_counter() - start
            result.plain_tl_sampled_counted += engine.stats["token_layers"] - before
            result.plain_tl_sampled_expected += size * benign.ids.shape[1] * n_layers
            result.plain_sampled += size
            expected_unembed += size * benign.n_target
            result.plain_time_sampled += elapsed
            result.plain_time_extrap += elapsed * len(ivs) / size
            diff = float(np.max(np.abs(plain - out[sample]))) if size else 0.0
            result.max_abs_diff = max(result.max_abs_diff, diff)
            if not np.isfinite(diff) or diff > TOLERANCE:
                worst = sample[int(np.argmax(np.max(np.abs(plain - out[sample]), axis=1)))]
                sys.exit(
                    f"FAIL: {model_label} / {row}: engine and plain path disagree on pair "
                    f"{pairs[pair_index].pair_id}, intervention {worst}: max |diff| = {diff:.3g} "
                    f"> {TOLERANCE:g}\n  intervention: {ivs[worst]}"
                )
    result.plain_peak_mb = peak.delta_mb
    if (result.plain_tl_sampled_counted, unembed.count) != (result.plain_tl_sampled_expected, expected_unembed):
        print(f"  warning: [{model_label}] {row}: the plain path executed {result.plain_tl_sampled_counted} "
              f"token-layers and {unembed.count} LM-head positions on its sample, not the "
              f"{result.plain_tl_sampled_expected} and {expected_unembed} the table extrapolates from",
              file=sys.stderr)
    return result


def bench_model(label: str, args) -> tuple[list[RowResult], dict]:
    import torch

    from harmmed.analyses.pairs import clean_runs
    from harmmed.patching.engine import MediationEngine

    t0 = time.perf_counter()
    if label == "default":
        model, refusal_ids, pairs = load_default(args.pairs)
        name = MODEL_NAME
    else:
        model, refusal_ids, pairs = load_tiny(args.pairs)
        name = "tiny llama (tests/tiny.py)"
    engine = MediationEngine(model, refusal_ids)  # default memory budget and batch size
    load_s = time.perf_counter() - t0

    release_free_memory()
    t0 = time.perf_counter()
    runs = [clean_runs(engine, pair) for pair in pairs]
    clean_s = time.perf_counter() - t0
    clean_tl = engine.stats["token_layers"]

    # Warm-up (untimed): one small patched batch and one plain pass.
    harmful, benign = runs[0]
    warm = row_interventions("layer", pairs[0], engine.sites.n_layers, engine.sites.d_mlp)[:8]
    engine.patch(benign, harmful, warm)
    engine.patch(benign, harmful, warm[:1], fast=False)
    engine.prefix_caches(benign).clear()

    unembed = UnembedCounter(model)
    results = []
    for row_index, row in enumerate(args.rows):
        res = measure_row(engine, label, row, pairs, runs, args.repeats, args.plain_sample, row_index, unembed,
                          args.max_row_seconds)
        print(f"  [{label}] {row}: engine {res.engine_time:.2f} s (runs: "
              f"{', '.join(f'{t:.2f}' for t in res.engine_times)}), plain ~{res.plain_time_extrap:.1f} s "
              f"(timed {res.plain_time_sampled:.1f} s), max |diff| {res.max_abs_diff:.1e}",
              file=sys.stderr, flush=True)
        results.append(res)
    screen = None
    if args.screen:  # the attribution screen on the first pair (bench/screen_bench.py)
        from screen_bench import time_screen

        screen = time_screen(engine, pairs[0], runs[0], name, clean_s=clean_s / len(pairs))
        print(f"  [{label}] screen: {screen.screen_s:.2f} s, exact ~{screen.exact_extrap_s:.0f} s, "
              f"Spearman {screen.spearman_pooled:.3f}", file=sys.stderr, flush=True)
    block = engine.sites.block(0)
    block_params = sum(p.numel() for p in block.parameters() if p.dim() > 1)  # matrices, not norms
    head = model.get_output_embeddings().weight
    import resource

    info = {
        "label": label,
        "head_tl": head.numel() / block_params,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "name": name,
        "n_layers": engine.sites.n_layers,
        "d_model": engine.sites.d_model,
        "d_mlp": engine.sites.d_mlp,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "pairs": [p.pair_id for p in pairs],
        "seq_lens": [len(p.benign_ids) + len(p.target_ids) for p in pairs],
        "first_diff": [next(i for i, (a, b) in enumerate(zip(p.harmful_ids, p.benign_ids)) if a != b)
                       for p in pairs],
        "load_s": load_s,
        "clean_s": clean_s,
        "clean_tl": clean_tl,
        "attn": getattr(model.config, "_attn_implementation", "?"),
        "batch": (engine.max_batch_size, engine.memory_budget_bytes / 2**20),
        "screen": screen,
    }
    unembed.close()
    del engine, model, runs
    release_free_memory()
    torch.set_num_threads(args.threads)  # unchanged, but stated once more for the next model
    return results, info


# ---------------------------------------------------------------------------- report
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def fmt_s(s: float) -> str:
    return f"{s:.2f}" if s < 100 else f"{s:.0f}"


def render(results: list[RowResult], infos: list[dict], args, machine: dict) -> str:
    lines = ["# Engine benchmark", ""]
    lines.append(
        f"Machine: {machine['cpu']}, {machine['cores']} cores visible to the process "
        f"({machine['cpu_count']} on the host); torch {machine['torch']} with "
        f"`torch.set_num_threads({args.threads})`, transformers {machine['transformers']}, "
        f"Python {machine['python']}, {machine['os']}. Load average before/after: "
        f"{machine['load_before']} / {machine['load_after']}."
    )
    lines.append("")
    for info in infos:
        lines.append(
            f"- **{info['label']}** = {info['name']}: {info['n_layers']} layers, d_model {info['d_model']}, "
            f"d_mlp {info['d_mlp']}, {info['params_m']:.1f}M parameters, float32 on CPU, attention "
            f"`{info['attn']}`; pairs {', '.join(info['pairs'])} (sequence lengths "
            f"{', '.join(map(str, info['seq_lens']))}, first differing position "
            f"{', '.join(map(str, info['first_diff']))}); engine max batch {info['batch'][0]}, budget "
            f"{info['batch'][1]:.0f} MB. Clean runs (not in the table, shared by both paths): "
            f"{info['clean_s']:.2f} s, {fmt_int(info['clean_tl'])} token-layers. One LM-head position "
            f"costs about {info['head_tl']:.2f} token-layers of matmul work. Process max RSS so far: "
            f"{info['max_rss_mb']:.0f} MB."
        )
    lines.append("")
    lines.append(
        f"Engine time: median of up to {args.repeats} repeat(s) over all pairs (the number run is in "
        f"brackets: a row stops repeating once its repeats took {args.max_row_seconds:g} s in total), "
        f"each repeat starting with no prefix caches. **Plain time is extrapolated**: `fast=False` was timed on a seeded random sample "
        f"of {args.plain_sample} interventions per pair (all of them where a pair has fewer) and scaled "
        f"linearly to the full count; the `plain timed` column gives what was actually measured. "
        f"Token-layers (TL) = tokens x decoder layers executed; engine TL include the prefix-cache "
        f"passes and exclude the clean runs. Exact ceiling = (plain TL + plain LM-head positions x h) / "
        f"(bound TL + bound LM-head positions x h), h the token-layer cost of one LM-head position: "
        f"the speed-up of a method that executes only the blocks and logits a patch can change, "
        f"but every one of those in full (the low-rank neuron head goes below it). max abs diff = largest |engine - plain| over both metrics "
        f"on the sampled interventions (must be <= {TOLERANCE:g}). Peak ΔRSS = resident-memory high-water "
        f"mark during that path's measurement minus the resident size just before it"
        + ("" if PeakRSS.exact else " (ru_maxrss fallback: process lifetime peak, coarse)")
        + "."
    )
    lines.append("")
    header = ["model", "stage", "interventions (no-op)", "engine s (runs)", "plain s (extrap.)", "plain timed",
              "speed-up", "exact ceiling", "bound TL", "engine TL (prefix)", "engine / bound", "plain TL",
              "plain / bound", "LM-head positions engine (low-rank) / bound / plain", "engine passes", "max abs diff",
              "peak ΔRSS MB engine / plain"]
    head_tl = {info["label"]: info["head_tl"] for info in infos}
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
    for r in results:
        ratio = lambda a, b: f"{a / b:.2f}" if b else "n/a"  # noqa: E731
        lines.append("| " + " | ".join([
            r.model,
            ROW_LABELS[r.row],
            f"{fmt_int(r.n_interventions)} ({fmt_int(r.n_identity)})",
            f"{fmt_s(r.engine_time)} ({len(r.engine_times)})",
            fmt_s(r.plain_time_extrap),
            f"{r.plain_sampled} in {fmt_s(r.plain_time_sampled)} s",
            f"{r.plain_time_extrap / r.engine_time:.1f}x",
            ratio(r.plain_tl + r.plain_unembed * head_tl[r.model], r.bound_tl + r.bound_unembed * head_tl[r.model]) + "x",
            fmt_int(r.bound_tl),
            f"{fmt_int(r.engine_tl)} ({fmt_int(r.prefix_tl)})",
            ratio(r.engine_tl, r.bound_tl),
            fmt_int(r.plain_tl),
            ratio(r.plain_tl, r.bound_tl),
            f"{fmt_int(r.engine_unembed)} ({fmt_int(r.engine_low_rank)}) / {fmt_int(r.bound_unembed)} / "
            f"{fmt_int(r.plain_unembed)}",
            fmt_int(r.engine_passes),
            f"{r.max_abs_diff:.1e}",
            f"{r.engine_peak_mb:.0f} / {r.plain_peak_mb:.0f}",
        ]) + " |")
    lines.append("")
    lines.append(
        f"Command: `.venv/bin/python bench/run_bench.py --model {args.model} --pairs {args.pairs} "
        f"--repeats {args.repeats} --max-row-seconds {args.max_row_seconds:g} "
        f"--plain-sample {args.plain_sample} --threads {args.threads}"
        + ("" if tuple(args.rows) == ROWS else f" --rows {','.join(args.rows)}")
        + f"`; total wall time {machine['total_s']:.0f} s."
    )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("default", "tiny", "both"), default="both")
    parser.add_argument("--pairs", type=int, default=2, help="minimal pairs per model (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="engine repeats; the median is reported")
    parser.add_argument("--max-row-seconds", type=float, default=60.0,
                        help="stop repeating a row once its engine repeats took this long in total "
                             "(default 60; at least one repeat always runs; 'inf' for exactly R)")
    parser.add_argument("--plain-sample", type=int, default=24,
                        help="interventions per pair timed on the plain path (default 24)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated subset of {','.join(ROWS)} (default: all)")
    parser.add_argument("--no-screen", dest="screen", action="store_false",
                        help="skip the attribution-screen benchmark (bench/screen_bench.py)")
    parser.add_argument("--write", action="store_true", help=f"also write {OUT_FILE.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in args.rows if r not in ROWS]
    if bad or not args.rows:
        parser.error(f"--rows: unknown {bad}; choose from {','.join(ROWS)}")
    for name in ("pairs", "repeats", "plain_sample", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"run_bench: torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"load average {load_before}", file=sys.stderr, flush=True)

    labels = ["default", "tiny"] if args.model == "both" else [args.model]
    results, infos = [], []
    for label in labels:
        rows, info = bench_model(label, args)
        results += rows
        infos.append(info)

    machine = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "total_s": time.perf_counter() - start,
    }
    assert torch.get_num_threads() == args.threads
    text = render(results, infos, args, machine)
    screens = [info["screen"] for info in infos if info["screen"] is not None]
    if screens:
        from screen_bench import render_screen

        text += render_screen(screens)
    print(text)
    if args.write:
        OUT_FILE.write_text(text, encoding="utf-8")
        print(f"wrote {OUT_FILE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
