"""Figures of the final-layer neuron analysis (C3): the per-neuron NIE distribution, the
sparsity curve, blocks against the sum of their neurons, and the held-out gating test."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .plotting import BAND_ALPHA, finish_axes, metrics_in, model_name, new_figure, save_figure, select, styled


# ---------------------------------------------------------------- neuron-level figures (C3)
@styled
def plot_neuron_distribution(ranking: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path,
                             n_labels: int = 5) -> list[Path]:
    """Final-layer single-neuron NIE (discovery mean, oriented), sorted, top neurons labelled."""
    metrics = metrics_in(ranking)
    fig, axes = new_figure(len(metrics), width=5.0)
    for ax, metric in zip(axes, metrics):
        ranks = select(ranking, metric=metric, site="neuron").sort_values("rank")
        ax.plot(ranks["rank"], ranks["oriented_nie"], color="tab:red", linewidth=1)
        top = ranks.head(n_labels)  # listed in a box: labels on the curve overlap where it is flat
        ax.scatter(top["rank"], top["oriented_nie"], color="tab:red", s=10, zorder=3)
        listing = "\n".join(f"{int(r['rank'])}. n{int(r['unit'])}  {r['oriented_nie']:.3g}" for _, r in top.iterrows())
        ax.text(0.98, 0.95, f"top {len(top)}\n{listing}", transform=ax.transAxes, ha="right", va="top", fontsize=7,
                family="monospace")
        ax.set_xscale("log")
        finish_axes(ax, f"{model_name(manifest)}: final-layer neurons [{metric}]",
                    "NIE (oriented to the layer's effect)", xlabel="rank")
    return save_figure(fig, out)


@styled
def plot_sparsity(sparsity_df: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path,
                  n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> list[Path]:
    """Share of the final-layer MLP NIE reached by the top k neurons (patched jointly) vs k,
    beside random k (mean and sd over draws)."""
    metrics = metrics_in(sparsity_df)
    width = int(manifest["d_mlp"])
    fig, axes = new_figure(len(metrics), width=5.0)
    for ax, metric in zip(axes, metrics):
        rows = select(sparsity_df, metric=metric)
        total = rows.groupby("pair_id")["layer_effect"].first().mean()
        if not np.isfinite(total) or total == 0:  # shares of a zero effect do not exist
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{model_name(manifest)} [{metric}]: no sparsity curve\n"
                    f"(the final-layer MLP NIE is {total:.3g}, so it has no shares)", ha="center", va="center")
            continue
        top = select(rows, selection="top").groupby("k")["effect"]
        ks = np.array(sorted(top.groups), dtype=float)
        mean = top.mean().reindex(ks).to_numpy() / total
        lows, highs = [], []
        for k in ks:
            values = select(rows, selection="top", k=int(k))["effect"].to_numpy() / total
            low, high = _mean_ci(values, n_boot, ci, seed)
            lows.append(low)
            highs.append(high)
        ax.plot(ks / width, mean, color="tab:red", marker=".", label="top k (discovery ranking)")
        ax.fill_between(ks / width, lows, highs, color="tab:red", alpha=BAND_ALPHA, linewidth=0)
        random = select(rows, selection="random").groupby(["k", "draw"])["effect"].mean() / total
        stats = random.groupby("k").agg(["mean", "std"]).reindex(ks)
        ax.plot(ks / width, stats["mean"], color="tab:gray", marker=".", label="random k (mean ± sd)")
        ax.fill_between(ks / width, stats["mean"] - stats["std"], stats["mean"] + stats["std"], color="tab:gray",
                        alpha=BAND_ALPHA, linewidth=0)
        for level in (0.5, 0.8):
            ax.axhline(level, color="black", linestyle=":", linewidth=0.7)
            ax.annotate(f"{level:g} of the layer", (1.0, level), xycoords=("axes fraction", "data"),
                        xytext=(-2, 2), textcoords="offset points", ha="right", va="bottom", fontsize=6)
        ax.set_xscale("log")
        # joint NIE of the top k over the whole layer's: above 1 where the rest of the layer cancels
        finish_axes(ax, f"{model_name(manifest)}: sparsity [{metric}]",
                    "joint NIE of k neurons / whole layer's", xlabel="fraction of final-layer neurons")
    return save_figure(fig, out)


def _mean_ci(values: np.ndarray, n_boot: int, ci: float, seed: int) -> tuple[float, float]:
    from ..stats.effects import bootstrap_ci

    return bootstrap_ci(values, n_boot=n_boot, ci=ci, seed=seed) if len(values) > 1 else (np.nan, np.nan)


@styled
def plot_block_vs_sum(neuron_df: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path) -> list[Path]:
    """Adjacency test at the final layer: each block's joint NIE against the sum of its
    neurons' single NIEs (means over pairs), with their Pearson correlation."""
    final = int(manifest["n_layers"]) - 1
    metrics = metrics_in(neuron_df)
    fig, axes = new_figure(len(metrics), width=4.2, height=3.8)
    for ax, metric in zip(axes, metrics):
        x, y = block_and_sum(neuron_df, metric, final)
        ax.scatter(x, y, s=14, color="tab:purple")
        lim = [min(np.min(x), np.min(y), 0), max(np.max(x), np.max(y), 0)]
        ax.plot(lim, lim, color="black", linewidth=0.7, linestyle="--", label="block = sum")
        r = np.corrcoef(x, y)[0, 1] if len(x) > 1 else np.nan
        finish_axes(ax, f"{model_name(manifest)}: blocks vs sums [{metric}], r = {r:.2f}", "block NIE (joint patch)",
                    xlabel="sum of single-neuron NIEs")
    return save_figure(fig, out)


def block_and_sum(neuron_df: pd.DataFrame, metric: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean block NIE and mean sum of its single-neuron NIEs, over pairs that have both."""
    rows = select(neuron_df, metric=metric, site="neuron", layer=layer)
    singles = rows[rows["block"].astype(str).isin(["", "nan"])].assign(unit=lambda d: d["neuron"].astype(float))
    blocks = rows[~rows["block"].astype(str).isin(["", "nan"])]
    width = int(singles["unit"].max()) + 1 if len(singles) else 0
    xs, ys = [], []
    for block, group in blocks.groupby("block", sort=True):
        start, stop = (int(v) for v in str(block).split(":"))
        if stop - start == width:  # the whole layer, not a block
            continue
        inside = singles[(singles["unit"] >= start) & (singles["unit"] < stop)]
        sums = inside.groupby("pair_id")["effect"].sum()
        joint = group.set_index("pair_id")["effect"]
        common = sums.index.intersection(joint.index)
        xs.append(sums.loc[common].mean())
        ys.append(joint.loc[common].mean())
    return np.array(xs), np.array(ys)


@styled
def plot_gating(gating_df: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path, n_boot: int = 1000,
                ci: float = 0.95, seed: int = 0) -> list[Path]:
    """Held-out change in each metric when the top-k final-layer neurons (or random k, or the
    top-k attention output-projection dimensions) of the harmful run are patched to benign
    values or mean-ablated; bars are means over pairs with bootstrap CIs."""
    metrics = metrics_in(gating_df)
    unit_order = ["topk_neuron", "random_neuron", "topk_attn_dims"]
    fig, axes = new_figure(len(metrics), width=5.2)
    for ax, metric in zip(axes, metrics):
        for offset, (intervention, color) in enumerate((("patch_benign", "tab:red"), ("mean_ablate", "tab:orange"))):
            rows = select(gating_df, metric=metric, intervention=intervention)
            means, errs = [], []
            for units in unit_order:
                per_pair = select(rows, units=units).groupby("pair_id")["effect"].mean().to_numpy()
                low, high = _mean_ci(per_pair, n_boot, ci, seed)
                mean = per_pair.mean() if len(per_pair) else np.nan
                means.append(mean)
                errs.append([mean - low, high - mean])
            xs = np.arange(len(unit_order)) + (offset - 0.5) * 0.38
            ax.bar(xs, means, width=0.36, color=color, label=intervention.replace("_", " "),
                   yerr=np.array(errs).T, capsize=3)
        ax.set_xticks(np.arange(len(unit_order)), ["top-k neurons", "random k neurons", "top-k attn dims"])
        finish_axes(ax, f"{model_name(manifest)}: gating on held-out pairs [{metric}]",
                    "y_patched - y_harmful", xlabel="")
    return save_figure(fig, out)
