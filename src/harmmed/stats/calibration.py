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
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

CALIBRATION_COLUMNS: list[str] = ["statistic", "model", "expected", "verdict", "value", "ci_low", "ci_high",
                                  "correct", "ground_truth"]
COLORS = {"match": "#4daf4a", "mismatch": "#e41a1c", "none": "#bdbdbd", "unestablished": "#fee08b"}
ESTABLISHED = "established"
# A plant's own recovery rows that say where its mechanism lives (not whether the method finds it):
# the planted band's type (target ">= ..."), its necessity and (a bypass plant) the bypassed band's;
# the gate's units jointly and held.
GROUND_TRUTH_ROWS = ("behaviour_check", "necessity_planted", "necessity_bypassed", "gate_planted_joint_nie",
                     "gate_planted_necessity")
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


def ground_truth_rows(recovery: pd.DataFrame, model: str) -> pd.DataFrame:
    """``model``'s own rows of its recovery table that say where its mechanism lives: the
    GROUND_TRUTH_ROWS and the planted type's ``type_contrast_<site>`` (the one with a ">=" target)."""
    own = recovery[(recovery["model"] == model) & (recovery["plant"].isin([model, ""]))]
    return own[own["statistic"].isin(GROUND_TRUTH_ROWS)
               | (own["statistic"].str.startswith("type_contrast_") & own["target"].str.startswith(">="))]


def unmet_ground_truth(recovery: pd.DataFrame, model: str) -> list[str]:
    """The ground-truth rows of ``model``'s own plant in its recovery table that missed their
    target (empty: the mechanism lives in the trained components). A table without the plant's
    own rows is an error: the ground truth cannot be checked."""
    rows = ground_truth_rows(recovery, model)
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
    """statistic -> its calibration status over the established plants:
    'calibrated on both sides' (right on at least one plant expecting `supported` and one
    expecting `not supported`), 'calibrated on one side' (which), 'not calibrated (wrong on
    ...)' or 'no ground truth'. A statistic right on one side only has not been shown to come
    out the other way."""
    marks = {}
    for statistic, group in calibration.groupby("statistic", sort=False):
        judged = group[group["ground_truth"] == ESTABLISHED]
        wrong = judged[judged["correct"] != "true"]["model"].tolist()
        sides = sorted(set(judged["expected"]), reverse=True)  # 'supported' before 'not supported'
        right = f"right on {len(judged)} plant{'s' if len(judged) != 1 else ''}"
        if judged.empty:
            marks[statistic] = "no ground truth"
        elif wrong:
            marks[statistic] = f"not calibrated (wrong on {', '.join(wrong)})"
        elif len(sides) == 2:
            marks[statistic] = f"calibrated on both sides ({right})"
        else:
            marks[statistic] = f"calibrated on one side ('{sides[0]}' only; {right})"
    return marks


def read_recovery(path: str | Path) -> pd.DataFrame:
    """A recovery.csv with numeric values (NaN where empty) and ``pass`` as text."""
    frame = pd.read_csv(path, keep_default_na=False, dtype={"pass": str, "target": str, "plant": str})
    for column in ("value", "ci_low", "ci_high"):
        frame[column] = pd.to_numeric(frame[column].replace("", np.nan))
    return frame
