"""Names and schemas shared across the library, importable without torch.

Figure and claims jobs run in an environment without torch, so the metric names, site names,
table column lists and the one proportion interval live here rather than beside the code that
computes them.
"""

from __future__ import annotations

import math
from statistics import NormalDist

METRICS: tuple[str, ...] = ("harm", "refusal")  # outcome metrics, in the engine's output column order

# Mediator sites. ``neuron`` is the MLP down-projection input; ``attn_dims`` the single dimensions
# of the attention output-projection input (both read at a projection's input, hence "unit" sites;
# src/harmmed/arch.py's SITE_HOOKS says which module and side each site is).
SITES: tuple[str, ...] = ("residual", "attn", "mlp", "neuron", "attn_dims")
UNIT_SITES: tuple[str, ...] = ("neuron", "attn_dims")

ROW_COLUMNS = ["pair_id", "metric", "kind", "site", "layer", "window", "positions",
               "y_benign", "y_harmful", "y_patched", "effect"]
NEURON_COLUMNS = ROW_COLUMNS + ["neuron", "block"]
SPARSITY_COLUMNS = ["pair_id", "metric", "selection", "draw", "k", "y_benign", "y_harmful", "y_patched",
                    "effect", "layer_effect"]
GATING_COLUMNS = ["pair_id", "metric", "intervention", "units", "draw", "k", "y_benign", "y_harmful",
                  "y_patched", "effect"]
PROBE_COLUMNS = ["layer", "condition", "accuracy", "ci_low", "ci_high", "n_prompts", "folds", "seed"]
RATE_COLUMNS = ("condition", "prompt_kind", "judge", "n", "n_compliance", "rate", "ci_low", "ci_high")


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; exact 0 and 1 at the edges.

    Wilson rather than the normal approximation because rates here are often 0 or 1 on a few
    dozen prompts, where the normal interval collapses to a point. NaN for n = 0.
    """
    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return float(low), float(high)

# recovery.csv: does the analysis find a planted mechanism (one row per model, plant, statistic)
RECOVERY_COLUMNS = ["model", "plant", "statistic", "value", "ci_low", "ci_high", "target", "pass", "n_pairs"]

# Per-model figures (file stems under figures/<model>/): the workflow's rules and targets and the
# bundle redraw all name them from here. STAGE_FIGURES: those of each stage a model may skip
# (skip_stages), in the report's reading order.
MODEL_FIGURES = ["layer_curves", "module_curves", "severed_paths", *(f"heatmap_{m}" for m in METRICS)]
NEURON_FIGURES = ["neuron_distribution", "sparsity", "block_vs_sum", "gating"]
SCREEN_FIGURES = ["screen_scatter", "screen_heatmap", "screen_sparsity", "screen_adjacency"]
STAGE_FIGURES = {
    "figures": [*MODEL_FIGURES, *NEURON_FIGURES, "probe_accuracy"],
    "mediate_token": [f"token_heatmap_{m}" for m in METRICS],
    "generate": ["generation_rates"],
    "screen": SCREEN_FIGURES,
}
