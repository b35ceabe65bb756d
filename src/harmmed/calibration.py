"""Calibration of the claim statistics against models whose mechanism we built.

A planted model's config entry states, in ``expected_verdicts``, the verdict each claim must
get on it (the ground truth is where its trained parameters are). Its rows of the calibration
metric (``calibration.metric``, the behaviour the plants were trained for) are compared with
that verdict; a plant must also show the behaviour, so its behaviour row is expected
`supported`. Rows without a ground truth (other metrics, unplanted models) are recorded but
never counted. A statistic is calibrated when it is right on every plant that has a ground
truth for it, and on at least one.

Training a component does not by itself make it the place where the decision is computed: the
untouched layers may compute on what it writes. So a fine-tuned plant's ground truth counts
only when its own recovery rows say the mechanism lives in its trained components: the planted
components carry the effect (joint NIE / TE) and are needed for it (necessity), both at their
targets, and the model passed its behaviour check. Otherwise its verdicts are recorded with the
reason (``ground_truth``) and never counted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CALIBRATION_COLUMNS: list[str] = ["statistic", "model", "expected", "verdict", "value", "ci_low", "ci_high",
                                  "correct", "ground_truth"]
COLORS = {"match": "#4daf4a", "mismatch": "#e41a1c", "none": "#bdbdbd", "unestablished": "#fee08b"}
ESTABLISHED = "established"
# A plant's own recovery rows that say where its mechanism lives (not whether the method finds it):
# the planted band's type (target ">= ...") and its necessity; the gate's units jointly and held.
GROUND_TRUTH_ROWS = ("behaviour_check", "necessity_planted", "gate_planted_joint_nie", "gate_planted_necessity")
_METRIC = re.compile(r"\[(\w+)\]$")


def row_metric(statistic: str) -> str | None:
    """The metric a statistic is about (the name's ``[metric]`` suffix), or None."""
    found = _METRIC.search(statistic)
    return found.group(1) if found else None


def expected_verdict(claim: str, statistic: str, expected: Mapping[str, str], metric: str) -> str:
    """The ground-truth verdict of one row of a model with ``expected`` verdicts ('' if none)."""
    if not expected or row_metric(statistic) not in (metric, None):
        return ""
    if claim == "B":
        return "supported"
    return expected.get(claim, "")


def unmet_ground_truth(recovery: pd.DataFrame, model: str) -> list[str]:
    """The ground-truth rows of ``model``'s own plant in its recovery table that missed their
    target (empty: the mechanism lives in the trained components). A table without the plant's
    own rows is an error: the ground truth cannot be checked."""
    own = recovery[(recovery["model"] == model) & (recovery["plant"].isin([model, ""]))]
    rows = own[own["statistic"].isin(GROUND_TRUTH_ROWS)
               | (own["statistic"].str.startswith("type_contrast_") & own["target"].str.startswith(">="))]
    if not (rows["statistic"] != "behaviour_check").any():
        raise ValueError(f"recovery table of {model}: no rows of its own plant to check its ground truth against")
    return rows[rows["pass"].astype(str) != "True"]["statistic"].tolist()


def calibration_table(tables: Mapping[str, pd.DataFrame], expected: Mapping[str, Mapping[str, str]],
                      metric: str, unestablished: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per (statistic, model), statistics in claims-table order, models in config order.
    ``unestablished``: model -> why its expected verdicts are not a ground truth (recorded in
    ``ground_truth``, never counted as right or wrong)."""
    rows = []
    for model, table in tables.items():
        reason = (unestablished or {}).get(model)
        for record in table.to_dict("records"):
            truth = expected_verdict(record["claim"], record["statistic"], expected.get(model) or {}, metric)
            judged = bool(truth) and reason is None
            rows.append({"statistic": record["statistic"], "model": model, "expected": truth,
                         "verdict": record["verdict"], "value": record["value"], "ci_low": record["ci_low"],
                         "ci_high": record["ci_high"],
                         "correct": str(record["verdict"] == truth).lower() if judged else "",
                         "ground_truth": "" if not truth else (ESTABLISHED if judged else f"not established: {reason}")})
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


def calibrated_marks(calibration: pd.DataFrame) -> dict[str, str]:
    """statistic -> 'calibrated (right on N plants)', 'not calibrated (wrong on ...)' or
    'no ground truth'. A calibrated statistic whose plants all expected one verdict says so: it
    has not been shown to come out the other way."""
    marks = {}
    for statistic, group in calibration.groupby("statistic", sort=False):
        judged = group[group["ground_truth"] == ESTABLISHED]
        wrong = judged[judged["correct"] != "true"]["model"].tolist()
        sides = sorted(set(judged["expected"]))
        if judged.empty:
            marks[statistic] = "no ground truth"
        elif wrong:
            marks[statistic] = f"not calibrated (wrong on {', '.join(wrong)})"
        else:
            one_sided = len(sides) == 1 and not statistic.startswith("behaviour_present_TE")  # B: a precondition
            only = f"; only '{sides[0]}' expected" if one_sided else ""
            marks[statistic] = f"calibrated (right on {len(judged)} plant{'s' if len(judged) > 1 else ''}{only})"
    return marks


def write_calibration_outputs(tables: Mapping[str, pd.DataFrame], expected: Mapping[str, Mapping[str, str]],
                              metric: str, outputs: Mapping[str, Any],
                              unestablished: Mapping[str, str] | None = None) -> pd.DataFrame:
    """calibration.csv, the grid figure and every model's claims.md (``outputs``: csv, png, md
    in the order of ``tables``), each written whole or not at all."""
    from .claims import CLAIMS_FLOAT_FORMAT, claims_markdown
    from .storage import atomic_path, write_table

    calibration = calibration_table(tables, expected, metric, unestablished)
    marks = calibrated_marks(calibration)
    write_table(calibration, list(calibration.columns), outputs["csv"], float_format=CLAIMS_FLOAT_FORMAT)
    plot_calibration(calibration, list(tables), outputs["png"])
    for (name, table), md in zip(tables.items(), outputs["md"]):
        with atomic_path(md) as tmp:
            tmp.write_text(claims_markdown(table, f"Claims: {name}", marks), encoding="utf-8")
    return calibration


_SHORT = {"supported": "S", "not supported": "NS", "inconclusive": "?", "not run": "-",
          "not applicable (no behaviour)": "n/a"}


def plot_calibration(calibration: pd.DataFrame, models: Sequence[str], out: str | Path) -> list[Path]:
    """Statistics x models grid: green where the verdict matches the ground truth, red where it
    does not, grey without a ground truth; each cell shows the verdict (expected in brackets)."""
    from .plotting import save_figure, styled

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
