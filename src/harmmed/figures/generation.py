"""The generation figure: compliance rates by condition, harmful and benign prompts side by side."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..constants import PROMPT_KINDS
from ..stats.rates import canonical_rate_order
from .plotting import finish_axes, model_name, new_figure, save_figure, styled

# ---------------------------------------------------------------- figure
KIND_STYLE = {"harmful": ("tab:red", "harmful prompts (harmful-response rate)"),
              "benign": ("tab:blue", "benign prompts")}


def plot_generation_rates(rates_df: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path) -> list[Path]:
    """Compliance rate by condition, harmful and benign prompts side by side, Wilson CI bars;
    one panel per judge. Writes ``<out>.png`` and ``<out>.pdf``."""
    return styled(_plot_generation_rates)(rates_df, manifest, out)


def _plot_generation_rates(rates_df: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path) -> list[Path]:
    rates = canonical_rate_order(rates_df)
    judges = list(dict.fromkeys(rates["judge"].astype(str))) or ["none"]
    fig, axes = new_figure(len(judges))
    for ax, judge in zip(axes, judges):
        part = rates[rates["judge"].astype(str) == judge]
        _draw_rate_bars(ax, part)
        n = sorted(set(int(v) for v in part["n"])) if len(part) else [0]
        finish_axes(ax, f"{model_name(manifest)}: generation\njudge {judge} (n={'/'.join(map(str, n))})",
                    "share of responses judged compliance", xlabel="condition")
        ax.set_ylim(0.0, 1.3)  # headroom above rate 1 for the legend, so no bar is hidden
        ax.set_yticks(np.linspace(0.0, 1.0, 6))
        ax.legend(loc="upper center", ncol=2, frameon=False, fontsize=6)
    return save_figure(fig, out)


def _draw_rate_bars(ax: Any, part: pd.DataFrame) -> None:
    """Grouped bars: x = condition, one bar per prompt kind, asymmetric CI error bars."""
    conditions = list(dict.fromkeys(part["condition"].astype(str)))
    x = np.arange(len(conditions), dtype=float)
    width = 0.38
    for offset, kind in zip((-width / 2, width / 2), PROMPT_KINDS):
        rows = part[part["prompt_kind"] == kind].set_index("condition").reindex(conditions)
        rate = rows["rate"].to_numpy(dtype=float)
        err = np.vstack([rate - rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float) - rate])
        color, label = KIND_STYLE[kind]
        ax.bar(x + offset, rate, width, color=color, alpha=0.8, label=label)
        ax.errorbar(x + offset, rate, yerr=err, fmt="none", ecolor="black", elinewidth=0.8, capsize=3)
    ax.set_xticks(x, conditions)
