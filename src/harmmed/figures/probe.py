"""The probe figure: out-of-fold accuracy of the harmfulness probe by layer, real against shuffled labels."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..constants import PROBE_CONDITIONS as CONDITIONS
from .plotting import BAND_ALPHA, finish_axes, model_name, new_figure, save_figure, styled

# ---------------------------------------------------------------- figure
PROBE_STYLE = {"real": ("tab:red", "-", "real labels"),
               "shuffled": ("tab:gray", "--", "pair-shuffled labels (control)")}


def plot_probe(probe_df: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path,
               level: float = 0.9) -> list[Path]:
    """Out-of-fold accuracy vs layer, real vs shuffled labels, Wilson CI bands, level dashed."""
    @styled
    def draw() -> list[Path]:
        fig, axes = new_figure(1, width=5.2)
        ax = axes[0]
        for condition in CONDITIONS:
            part = probe_df[probe_df["condition"] == condition].sort_values("layer", kind="mergesort")
            if part.empty:
                continue
            color, style, label = PROBE_STYLE[condition]
            x = part["layer"].to_numpy(dtype=float)
            ax.plot(x, part["accuracy"], color=color, linestyle=style, marker=".", markersize=3,
                    linewidth=1.2, label=label)
            ax.fill_between(x, part["ci_low"], part["ci_high"], color=color, alpha=BAND_ALPHA,
                            linewidth=0)
        ax.axhline(level, color="black", linestyle="--", linewidth=0.9, label=f"level {level:g}")
        ax.axhline(0.5, color="black", linestyle=":", linewidth=0.8, label="chance")
        n = int(probe_df["n_prompts"].max()) if len(probe_df) else 0
        finish_axes(ax, f"{model_name(manifest)}: harmfulness probe ({n} prompts)",
                    "out-of-fold accuracy", xlabel="layer")
        ax.set_xlabel("layer (-1 = embeddings)")
        ax.set_ylim(0.0, 1.02)
        return save_figure(fig, out)

    return draw()
