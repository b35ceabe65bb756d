"""Names and schemas shared across the library, importable without torch.

Figure and claims jobs run in an environment without torch, so the metric names, site names,
table column lists and the labels the figures share with the analyses live here rather than
beside the code that computes them.
"""

from __future__ import annotations

PACKAGE_VERSION = "0.1.0"

METRICS: tuple[str, ...] = ("harm", "refusal")  # outcome metrics, in the engine's output column order
FIRST_TOKEN_METRICS: tuple[str, ...] = ("refusal",)  # read off the last prompt position's logits alone


def metrics_in(*tables) -> list[str]:
    """The metrics that have rows in any of ``tables`` (frames with a ``metric`` column), in
    METRICS order: a model scored on fewer metrics (``scored_metrics``) has fewer."""
    found = set().union(*(set(table["metric"].astype(str)) for table in tables if len(table)))
    return [m for m in METRICS if m in found] + sorted(found - set(METRICS))

# Mediator sites. ``neuron`` is the MLP down-projection input; ``attn_dims`` the single dimensions
# of the attention output-projection input (both read at a projection's input, hence "unit" sites;
# src/harmmed/models/arch.py's SITE_HOOKS says which module and side each site is).
SITES: tuple[str, ...] = ("residual", "attn", "mlp", "neuron", "attn_dims")
UNIT_SITES: tuple[str, ...] = ("neuron", "attn_dims")

ROW_COLUMNS = ["pair_id", "metric", "kind", "site", "layer", "window", "positions",
               "y_benign", "y_harmful", "y_patched", "effect"]
NEURON_COLUMNS = ROW_COLUMNS + ["neuron", "block"]
SPARSITY_COLUMNS = ["pair_id", "metric", "selection", "draw", "k", "y_benign", "y_harmful", "y_patched",
                    "effect", "layer_effect"]
GATING_COLUMNS = ["pair_id", "metric", "intervention", "units", "draw", "k", "y_benign", "y_harmful",
                  "y_patched", "effect"]
PROBE_COLUMNS = ["position", "layer", "condition", "accuracy", "ci_low", "ci_high", "n_prompts", "folds", "seed"]
RATE_COLUMNS = ("condition", "prompt_kind", "judge", "n", "n_compliance", "rate", "ci_low", "ci_high")


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

# Labels the analyses write and the figures read.
GENERATION_CONDITIONS: tuple[str, ...] = ("none", "gate_mean", "gate_zero", "random_mean")
PROMPT_KINDS: tuple[str, ...] = ("harmful", "benign")
PROBE_CONDITIONS: tuple[str, ...] = ("real", "shuffled")
PROBE_CI = 0.95  # level of the probe's per-layer Wilson intervals
# Probed prompt positions, as offsets from the prompt's end past its post-instruction template
# tokens: "instruction" is the last token of the request itself, where the prompt has been read
# (the C4 rows judge it); "last" is the last prompt token, where the response starts.
PROBE_POSITIONS: tuple[str, ...] = ("instruction", "last")
UNDERSTANDING_POSITION = "instruction"
TOKEN_ROLES: tuple[str, ...] = ("template", "before_span", "span", "after_span", "post")
UNALIGNED = "unaligned"  # a position of an unpaired prompt with no counterpart: no token role
TOKEN_ROLE_LABELS = {"template": "template", "before_span": "before\nspan", "span": "span",
                     "after_span": "after\nspan", "post": "post-\ninstr."}
