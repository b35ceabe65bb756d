"""The recovery figure: does the analysis find each planted mechanism, beside the models without it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .plotting import new_figure, save_figure

RATIO_AXIS = (-0.5, 1.5)  # effect / TE; a model without the behaviour has ratios far outside


NOT_RATIOS = ("localisation_best_window_centre", "behaviour_check")  # a layer index, a flag


def target_threshold(target: str) -> float | None:
    """The number in a target such as ``>= 0.8``; None for a relative or non-numeric target."""
    match = re.fullmatch(r"\s*(>=|<=|>|<)\s*(-?\d+(?:\.\d*)?)\s*", target)
    return float(match.group(2)) if match else None


def recovery_panels(frame: pd.DataFrame) -> list[str]:
    """The plants to draw, in table order; rows of models without a plant (``plant`` empty, the
    aligned model's behaviour check) have no panel."""
    return [plant for plant in dict.fromkeys(frame["plant"]) if plant]


def plot_recovery(tables: Sequence[pd.DataFrame], out: str | Path) -> list[Path]:
    """One panel per plant: each ratio statistic of the plant itself (bar, CI, green = meets its
    target, red = misses, dashes = the target) beside the same statistic on the models without
    that plant, e.g. the aligned one (dots; triangles at the dotted clip lines where a
    value lies off the ratio axis; a clipped bar is labelled with its value). The window centre
    and the behaviour check are not ratios, so they are written in the panel, not drawn."""
    frame = pd.concat(tables, ignore_index=True)
    plants = recovery_panels(frame)
    n_rows = 1 if len(plants) < 3 else 2
    fig, axes = new_figure(len(plants) + 1, width=5.2, height=4.6, n_rows=n_rows, bottom=1.5)  # +1: the key
    axes = np.atleast_1d(axes).ravel()
    low, high = RATIO_AXIS
    colors = {"True": "tab:green", "False": "tab:red"}
    for ax, plant in zip(axes, plants):
        rows = frame[frame["plant"] == plant]
        own = rows[rows["model"] == plant]
        stats = [stat for stat in dict.fromkeys(rows["statistic"]) if stat not in NOT_RATIOS]
        for i, stat in enumerate(stats):
            hit = own[own["statistic"] == stat]
            if len(hit):
                row = hit.iloc[0]
                value = float(np.clip(row["value"], low, high))
                ax.bar(i, value, color=colors.get(str(row["pass"]), "tab:gray"), alpha=0.8)
                if np.isfinite(row["value"]) and value != row["value"]:  # clipped: say the real value
                    ax.text(i, value, f"{row['value']:.2g}", ha="center", va="bottom" if value > 0 else "top",
                            fontsize=7)
                if np.isfinite(row["ci_low"]):
                    ci = np.clip([row["ci_low"], row["ci_high"]], low, high)
                    ax.errorbar(i, value, yerr=[[value - ci[0]], [ci[1] - value]], color="black", capsize=3, lw=1)
                threshold = target_threshold(str(row["target"]))
                if threshold is not None:
                    ax.hlines(threshold, i - 0.45, i + 0.45, colors="black", linestyles="dashed", lw=1)
            others = rows[(rows["statistic"] == stat) & (rows["model"] != plant)]["value"].dropna().to_numpy()
            inside = (others >= low) & (others <= high)
            for marker, chosen in (("o", inside), ("^", others > high), ("v", others < low)):
                if chosen.any():
                    ax.scatter(np.full(chosen.sum(), i), np.clip(others[chosen], low, high), color="black",
                               marker=marker, s=14, zorder=3)
        notes = []
        centre = own[own["statistic"] == "localisation_best_window_centre"]
        if len(centre):
            row = centre.iloc[0]
            verdict = {"True": "met", "False": "missed"}.get(str(row["pass"]), "")
            band = row["target"].replace("window centre ", "")
            notes.append(f"best window centre {row['value']:g}, target {band}: {verdict}")
        check = own[own["statistic"] == "behaviour_check"]
        if len(check):
            notes.append("behaviour check " + ("passed" if str(check.iloc[0]["pass"]) == "True" else "failed"))
        ax.text(0.02, 0.98, "\n".join(notes), transform=ax.transAxes, va="top", ha="left", fontsize=7)
        ax.set_xticks(np.arange(len(stats)), [s.replace("_", " ") for s in stats], rotation=60, ha="right", fontsize=7)
        ax.set_ylim(low - 0.1, high + 0.5)  # room above for the notes; nothing is drawn beyond the clip lines
        ax.set_yticks(np.arange(low, high + 0.01, 0.5))
        for edge in (low, high):
            ax.axhline(edge, color="0.6", lw=0.6, ls="dotted")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(plant, fontsize=9)
        ax.set_ylabel("effect / TE (recall: share of planted units)")
    key = axes[len(plants)]
    key.scatter([], [], color="black", s=14, label="models without this plant")
    key.scatter([], [], color="black", marker="^", s=14, label="the same, off the axis (above)")
    key.scatter([], [], color="black", marker="v", s=14, label="the same, off the axis (below)")
    key.plot([], [], color="black", ls="dashed", lw=1, label="target")
    for color, meaning in (("tab:green", "the plant: meets its target"), ("tab:red", "the plant: misses it"),
                           ("tab:gray", "the plant: no target")):
        key.bar([0], [0], color=color, alpha=0.8, label=meaning)
    key.legend(loc="center", fontsize=9, frameon=False)
    for unused in axes[len(plants):]:
        unused.set_axis_off()
    return save_figure(fig, out)
