"""The discovery ranking of final-layer units, read off the neuron stage's table alone.

Torch-free, so the ranking is its own small job after the neuron shards are merged: the gating
test, the claims, the recovery and the sparsity curve all read it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..constants import UNIT_SITES, metrics_in

RANKING_COLUMNS = ["metric", "site", "layer", "unit", "mean_nie", "oriented_nie", "rank"]


def rank_units(neuron_df: pd.DataFrame, site: str, layer: int) -> pd.DataFrame:
    """Mean single-unit NIE per metric, oriented so that positive is the direction of the
    whole layer's effect, ranked descending (ties by unit index, so rankings are stable)."""
    singles = neuron_df[(neuron_df["site"] == site) & (neuron_df["layer"] == layer) & (neuron_df["block"] == "")]
    whole = neuron_df[(neuron_df["site"] == site) & (neuron_df["layer"] == layer) & (neuron_df["neuron"] == "")
                      & neuron_df["block"].str.startswith("0:")]
    whole = whole[whole["block"].str.split(":").str[1].astype(int) == singles["neuron"].astype(int).max() + 1]
    out = []
    for metric in metrics_in(singles):
        sign = np.sign(whole[whole["metric"] == metric]["effect"].mean()) or 1.0
        mean = (singles[singles["metric"] == metric].assign(unit=lambda d: d["neuron"].astype(int))
                .groupby("unit")["effect"].mean())
        frame = pd.DataFrame({"metric": metric, "site": site, "layer": layer, "unit": mean.index,
                              "mean_nie": mean.values, "oriented_nie": sign * mean.values})
        frame = frame.sort_values(["oriented_nie", "unit"], ascending=[False, True], kind="mergesort")
        frame["rank"] = np.arange(1, len(frame) + 1)
        out.append(frame)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=RANKING_COLUMNS)


def discovery_ranking(neuron_df: pd.DataFrame, layer: int) -> pd.DataFrame:
    """Every unit site's ranking at ``layer`` (the final layer), one table."""
    return pd.concat([rank_units(neuron_df, site, layer) for site in UNIT_SITES], ignore_index=True)
