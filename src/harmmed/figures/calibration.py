"""The calibration grid: each claim statistic's verdict on each model against its ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..stats.calibration import COLORS, ESTABLISHED
from .plotting import save_figure, styled

_SHORT = {"supported": "S", "not supported": "NS", "inconclusive": "?", "not run": "-",
          "not applicable (no behaviour)": "n/a"}


def plot_calibration(calibration: pd.DataFrame, models: Sequence[str], out: str | Path) -> list[Path]:
    """Statistics x models grid: green where the verdict matches the ground truth, red where it
    does not, grey without a ground truth; each cell shows the verdict (expected in brackets)."""
    return styled(_draw_calibration)(calibration, list(models), Path(out), save_figure)


def _draw_calibration(calibration: pd.DataFrame, models: list[str], out: Path, save) -> list[Path]:
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure

    statistics = list(dict.fromkeys(calibration["statistic"])) or ["(no statistics)"]
    cells = calibration.set_index(["statistic", "model"])
    grid = np.ones((len(statistics), max(len(models), 1), 3))
    left, width, height = 3.6, 1.3 * max(len(models), 1), 0.3 * len(statistics)
    fig = Figure(figsize=(left + width + 0.3, height + 2.1))
    fig.subplots_adjust(left=left / (left + width + 0.3), right=1 - 0.3 / (left + width + 0.3),
                        bottom=0.9 / (height + 2.1), top=1 - 0.95 / (height + 2.1))
    ax = fig.subplots()
    for i, statistic in enumerate(statistics):
        for j, model in enumerate(models):
            if (statistic, model) not in cells.index:
                continue
            cell: Any = cells.loc[(statistic, model)]
            state = ("none" if not cell["expected"] else "unestablished" if cell["ground_truth"] != ESTABLISHED
                     else "match" if cell["correct"] == "true" else "mismatch")
            grid[i, j] = to_rgb(COLORS[state])
            text = _SHORT.get(cell["verdict"], str(cell["verdict"]))
            if cell["expected"]:
                text += f" ({_SHORT.get(cell['expected'], cell['expected'])})"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.imshow(grid, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(statistics)), statistics, fontsize=7)
    ax.grid(False)
    fig.text(0.02, 1 - 0.15 / (height + 2.1), "calibration of the claim statistics\n"
             "green: verdict = ground truth, red: wrong, grey: no ground truth,\n"
             "yellow: the plant's ground truth not established (behaviour or its own recovery failed)\n"
             "cell: verdict (expected); S supported, NS not supported, ? inconclusive, n/a no behaviour",
             ha="left", va="top", fontsize=8)
    return save(fig, out.with_suffix(""))
