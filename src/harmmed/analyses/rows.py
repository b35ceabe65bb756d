"""The one row builder: interventions' labels and outcomes to tidy rows, one per metric.

Every mediation table (layer, module, severed, heatmap, token, neuron, sparsity, gating) is
made of these rows: the labels of the intervention, both clean outcomes and the patched one,
and the effect against the clean run the intervention patched, so effects can be recomputed
from the file alone. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from ..constants import METRICS


def outcome_rows(pair_id: str, labels: Iterable[Mapping[str, Any]], outcomes: Iterable[Sequence[float]],
                 runs: tuple[Any, Any], effect_from: Literal["benign", "harmful"] = "benign",
                 lost: bool = False) -> list[dict]:
    """One row per (intervention, metric), in the order given; ``outcomes[i][m]`` is metric
    ``METRICS[m]`` under intervention ``i``. ``runs`` is (harmful, benign) (anything with a
    ``y`` mapping); ``effect = y_patched - y_<effect_from>``, or with ``lost`` the outcome lost,
    ``y_<effect_from> - y_patched`` (necessity). A label's ``metric`` key other
    than ``"*"`` keeps only that metric's row (an intervention chosen for one metric). A metric the
    engine did not score has no row: the engine returns NaN for exactly those (the model's
    ``scored_metrics`` leave them out) and refuses a NaN in a scored one."""
    if effect_from not in ("benign", "harmful"):
        raise ValueError(f"effect_from must be 'benign' or 'harmful', not {effect_from!r}")
    harmful, benign = runs
    reference = benign if effect_from == "benign" else harmful
    rows = []
    for label, y in zip(labels, outcomes):
        only = label.get("metric", "*")
        for m_index, metric in enumerate(METRICS):
            if only not in ("*", metric):
                continue
            patched = float(y[m_index])
            if math.isnan(patched):
                continue
            effect = reference.y[metric] - patched if lost else patched - reference.y[metric]  # never -0.0
            row = {"pair_id": pair_id, "metric": metric, **label, "y_benign": benign.y[metric],
                   "y_harmful": harmful.y[metric], "y_patched": patched, "effect": effect}
            row["metric"] = metric  # a label's metric filter is not the row's metric
            rows.append(row)
    return rows
