"""Benchmark of the attribution screen: every unit of every layer for one pair and one metric,
beside the extrapolated cost of patching every unit exactly and the measured rank agreement.

Used by ``run_bench.py`` (SmolLM2 and the tiny model, CPU) and ``screen_gpu.py`` (an
8B-shaped model on a GPU). Times synchronise the GPU when there is one.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from harmmed.analyses.pairs import position_sets
from harmmed.constants import METRICS
from harmmed.datasets.prompts import EncodedPair
from harmmed.patching.attribution import unit_estimates, unit_gradients
from harmmed.patching.engine import MediationEngine
from harmmed.patching.patches import Patch, Run
from harmmed.stats.screen_report import spearman

SAMPLE_SEED = 20240601


@dataclass
class ScreenTiming:
    model: str
    metric: str
    n_layers: int
    d_mlp: int
    screen_s: float  # gradient pass + estimates of every unit (median of repeats)
    screen_times: list[float]
    clean_s: float  # the two clean runs the estimate reads (shared with every analysis)
    exact_sample: int  # single-unit patches timed
    exact_sample_s: float
    exact_extrap_s: float  # every unit of every layer, one exact patch each
    spearman_pooled: float  # estimate vs exact over every sampled unit
    spearman_median_layer: float  # median over layers of the per-layer Spearman
    spearman_min_layer: float
    max_rel_error_top: float  # max |estimate - exact| / |exact| over each layer's top units

    @property
    def speedup(self) -> float:
        return self.exact_extrap_s / self.screen_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_screen(engine: MediationEngine, pair: EncodedPair, runs: tuple[Run, Run], label: str,
                metric: str = "refusal", repeats: int = 3, per_layer: tuple[int, int] = (8, 8),
                clean_s: float = float("nan")) -> ScreenTiming:
    """Screen one pair for one metric (all prompt positions) ``repeats`` times; then patch a
    sample of units per layer exactly (the top ``per_layer[0]`` by |estimate| and
    ``per_layer[1]`` random others) to time exact patching and measure the rank agreement."""
    harmful, benign = runs
    sets = {"all": position_sets(pair)["all"]}
    times, estimates = [], None
    for _ in range(repeats):
        _sync(engine.device)
        start = time.perf_counter()
        grads, _ = unit_gradients(engine, benign, metrics=(metric,))
        estimates = unit_estimates(grads, benign, harmful, sets)[(metric, "all")]
        _sync(engine.device)
        times.append(time.perf_counter() - start)
        del grads
    rng = np.random.default_rng(SAMPLE_SEED)
    n_layers, width = estimates.shape
    sample: list[tuple[int, int]] = []
    for layer in range(n_layers):
        top = np.lexsort((np.arange(width), -np.abs(estimates[layer])))[: per_layer[0]]
        rest = np.setdiff1d(np.arange(width), top)
        sample += [(layer, int(u)) for u in top] + [(layer, int(u)) for u in rng.choice(rest, per_layer[1], False)]
    _sync(engine.device)
    start = time.perf_counter()
    ys = engine.patch(benign, harmful, [(Patch("neuron", layer, sets["all"], (unit,)),) for layer, unit in sample])
    _sync(engine.device)
    exact_s = time.perf_counter() - start
    exact = ys[:, METRICS.index(metric)] - benign.y[metric]
    estimate = np.array([estimates[layer, unit] for layer, unit in sample])
    layers = np.array([layer for layer, _ in sample])
    per_layer_rho = [spearman(estimate[layers == layer], exact[layers == layer]) for layer in range(n_layers)]
    is_top = np.tile(np.r_[np.ones(per_layer[0], bool), np.zeros(per_layer[1], bool)], n_layers)
    rel = np.abs(estimate - exact)[is_top] / np.maximum(np.abs(exact[is_top]), 1e-12)
    finite = [r for r in per_layer_rho if np.isfinite(r)]
    return ScreenTiming(
        model=label, metric=metric, n_layers=n_layers, d_mlp=width, screen_s=statistics.median(times),
        screen_times=times, clean_s=clean_s, exact_sample=len(sample), exact_sample_s=exact_s,
        exact_extrap_s=exact_s / len(sample) * n_layers * width, spearman_pooled=spearman(estimate, exact),
        spearman_median_layer=float(np.median(finite)) if finite else float("nan"),
        spearman_min_layer=float(min(finite)) if finite else float("nan"), max_rel_error_top=float(rel.max()))


def render_screen(timings: list[ScreenTiming]) -> str:
    """The screen's Markdown table (appended to the engine benchmark)."""
    lines = ["", "## Attribution screen (every MLP unit of every layer, one pair, one metric)", "",
             "Screen = one forward and one backward pass on the benign run plus the estimates of every unit "
             "at all prompt positions (median of the repeats; the two clean runs it reads are shared with "
             "every analysis and listed apart). Exact = one engine patch per unit, timed on a seeded sample "
             "per layer (that layer's top units by |estimate| and random others, batched as the engine "
             "does) and extrapolated to every unit of every layer. Rank agreement = Spearman correlation "
             "of estimate and exact NIE on the sample (pooled; median and minimum over layers).", "",
             "| model | metric | units | screen s (repeats) | clean runs s | exact sample | exact s (extrap.) "
             "| speed-up | Spearman pooled / median layer / min layer | max rel. error, top units |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in timings:
        lines.append(
            f"| {t.model} | {t.metric} | {t.n_layers} x {t.d_mlp:,} | {t.screen_s:.2f} "
            f"({', '.join(f'{x:.2f}' for x in t.screen_times)}) | {t.clean_s:.2f} | "
            f"{t.exact_sample:,} in {t.exact_sample_s:.1f} s | {t.exact_extrap_s:,.0f} | {t.speedup:,.0f}x | "
            f"{t.spearman_pooled:.3f} / {t.spearman_median_layer:.3f} / {t.spearman_min_layer:.3f} | "
            f"{t.max_rel_error_top:.2f} |")
    return "\n".join(lines) + "\n"
