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
               relative_level: float = 0.9) -> list[Path]:
    """Out-of-fold accuracy vs layer, real vs shuffled labels, Wilson CI bands; one panel per
    probed position, with the decodability level (relative_level x that position's best) dashed."""
    positions = list(dict.fromkeys(probe_df["position"]))

    @styled
    def draw() -> list[Path]:
        fig, axes = new_figure(max(1, len(positions)), width=5.2)
        n = int(probe_df["n_prompts"].max()) if len(probe_df) else 0
        for ax, position in zip(axes, positions):
            here = probe_df[probe_df["position"] == position]
            for condition in CONDITIONS:
                part = here[here["condition"] == condition].sort_values("layer", kind="mergesort")
                if part.empty:
                    continue
                color, style, label = PROBE_STYLE[condition]
                x = part["layer"].to_numpy(dtype=float)
                ax.plot(x, part["accuracy"], color=color, linestyle=style, marker=".", markersize=3,
                        linewidth=1.2, label=label)
                ax.fill_between(x, part["ci_low"], part["ci_high"], color=color, alpha=BAND_ALPHA,
                                linewidth=0)
            decoder = here[(here["condition"] == "real") & (here["layer"] >= 0)]
            level = relative_level * float(decoder["accuracy"].max()) if len(decoder) else float("nan")
            ax.axhline(level, color="black", linestyle="--", linewidth=0.9,
                       label=f"{relative_level:g} x best ({level:.2f})")
            ax.axhline(0.5, color="black", linestyle=":", linewidth=0.8, label="chance")
            finish_axes(ax, f"{model_name(manifest)}: probe at the {position} token ({n} prompts)",
                        "out-of-fold accuracy", xlabel="layer")
            ax.set_xlabel("layer (-1 = embeddings)")
            ax.set_ylim(0.0, 1.02)
        return save_figure(fig, out)

    return draw()
