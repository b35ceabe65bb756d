"""Figures of the unit screen: its accuracy by depth, the per-unit NIE at every layer, and the
held-out sparsity and adjacency tests (torch-free; byte-stable like ``plotting``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize

from ..stats.screen_report import adjacency_table, heldout_summary, spearman
from .plotting import POSITION_COLORS, finish_axes, metrics_in, model_name, new_figure, save_figure, select, styled

N_BANDS = 4
K_COLORS = ("tab:red", "tab:orange", "tab:green", "tab:blue", "tab:purple", "tab:brown")


def depth_bands(n_layers: int, n_bands: int = N_BANDS) -> list[np.ndarray]:
    return [band for band in np.array_split(np.arange(n_layers), min(n_bands, n_layers)) if len(band)]


@styled
def plot_screen_scatter(screen: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path) -> list[Path]:
    """Estimate against exact NIE of every verified unit, one panel per metric and depth band,
    coloured by position set; the diagonal is a perfect screen."""
    verified = screen[screen["verified"] != ""]
    metrics = metrics_in(screen)
    bands = depth_bands(int(manifest["n_layers"]))
    fig, axes = new_figure(len(metrics) * len(bands), width=3.4, height=3.2, n_rows=len(metrics))
    for row, metric in enumerate(metrics):
        for col, band in enumerate(bands):
            ax = axes[row * len(bands) + col]
            rows = verified[(verified["metric"] == metric) & verified["layer"].isin(band)]
            for positions, group in rows.groupby("positions", sort=True):
                ax.scatter(group["exact"], group["estimate"], s=4, alpha=0.6, linewidths=0,
                           color=POSITION_COLORS.get(str(positions), "tab:gray"), label=str(positions))
            lim = float(np.nanmax(np.abs(rows[["exact", "estimate"]].to_numpy()))) if len(rows) else 1.0
            ax.plot([-lim, lim], [-lim, lim], color="black", linewidth=0.6)
            rho = spearman(rows["estimate"].to_numpy(), rows["exact"].to_numpy())
            finish_axes(ax, f"[{metric}] layers {band[0]}-{band[-1]}: rho {rho:.2f}", "attribution estimate",
                        xlabel="exact NIE")
    fig.subplots_adjust(top=1 - 0.8 / fig.get_figheight())  # room for the title above the panel titles
    fig.suptitle(f"{model_name(manifest)}: unit screen against exact patching ({len(verified)} verified rows)")
    return save_figure(fig, out)


def rank_grid(screen: pd.DataFrame, metric: str, positions: str, n_layers: int) -> np.ndarray:
    """(n_layers, d_mlp): each layer's mean estimate over pairs, sorted by magnitude (rank 1 =
    the largest |estimate|), signs kept, so a log rank axis shows both directions' top units."""
    rows = select(screen, metric=metric, positions=positions)
    mean = rows.groupby(["layer", "unit"], sort=True)["estimate"].mean().unstack("unit")
    grid = np.full((n_layers, mean.shape[1]), np.nan)
    for layer, values in mean.iterrows():
        values = values.to_numpy()
        grid[int(layer)] = values[np.lexsort((np.arange(len(values)), -np.abs(values)))]
    return grid


@styled
def plot_screen_heatmap(screen: pd.DataFrame, outcomes: pd.DataFrame, manifest: Mapping[str, Any],
                        positions: str, out: str | Path) -> list[Path]:
    """Layer x unit-rank heatmap of the per-unit NIE estimate / TE, units ranked by magnitude:
    where in depth a few units carry a lot (a dark left edge) and where the effect is spread thin."""
    metrics = metrics_in(screen)
    n_layers = int(manifest["n_layers"])
    fig, axes = new_figure(len(metrics), width=5.4, height=4.2)
    for ax, metric in zip(axes, metrics):
        te = float((outcomes.loc[outcomes["metric"] == metric, "y_harmful"]
                    - outcomes.loc[outcomes["metric"] == metric, "y_benign"]).mean())
        grid = rank_grid(screen, metric, positions, n_layers) / (te if abs(te) > 0 else 1.0)
        finite = np.abs(grid[np.isfinite(grid)])
        vmax = float(np.quantile(finite, 0.999)) if finite.size else 1.0
        edges = np.arange(grid.shape[1] + 1) + 0.5
        mesh = ax.pcolormesh(edges, np.arange(n_layers + 1) - 0.5, grid, cmap=matplotlib.colormaps["RdBu_r"],
                             norm=Normalize(-vmax or -1.0, vmax or 1.0), shading="flat", rasterized=True)
        ax.set_xscale("log")
        ax.grid(False)
        fig.colorbar(mesh, ax=ax, label="estimated NIE / mean TE", format="%.2g")
        ax.set_title(f"{model_name(manifest)} [{metric}, {positions}]")
        ax.set_xlabel("unit rank within its layer (by |estimate|)")
        ax.set_ylabel("layer")
    return save_figure(fig, out)


@styled
def plot_screen_sparsity(heldout: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path) -> list[Path]:
    """Held-out share of the TE carried by the screen's top-k units of each layer (patched
    jointly) against depth, beside random k and the whole layer."""
    summary = heldout_summary(heldout)
    metrics = metrics_in(heldout)
    fig, axes = new_figure(len(metrics), width=5.4)
    for ax, metric in zip(axes, metrics):
        rows = select(summary, metric=metric)
        top = select(rows, selection="top")
        for color, (k, group) in zip(K_COLORS, top.groupby("k", sort=True)):
            ax.plot(group["layer"], group["mean_share"], color=color, marker=".", linewidth=1, label=f"top {k}")
        random = select(rows, selection="random")
        if len(random):
            k_max = random["k"].max()
            largest = select(random, k=k_max)
            ax.plot(largest["layer"], largest["mean_share"], color="tab:gray", linewidth=1, label=f"random {k_max}")
        whole = select(rows, selection="layer")
        ax.plot(whole["layer"], whole["mean_share"], color="black", linestyle="--", linewidth=1, label="whole layer")
        n_pairs = int(rows["n_pairs"].max()) if len(rows) else 0
        finish_axes(ax, f"{model_name(manifest)}: held-out sparsity [{metric}], {n_pairs} pairs",
                    "joint NIE / TE")
    return save_figure(fig, out)


@styled
def plot_screen_adjacency(heldout: pd.DataFrame, manifest: Mapping[str, Any], block_size: int,
                          out: str | Path) -> list[Path]:
    """The adjacency test at every layer: the screen's best contiguous block of B units against
    its best B units anywhere (and random B), held-out NIE / TE."""
    table = adjacency_table(heldout, block_size)
    metrics = metrics_in(heldout)
    fig, axes = new_figure(len(metrics), width=5.4)
    styles = {"top": ("tab:red", f"best {block_size} units anywhere"),
              "block": ("tab:blue", f"best contiguous block of {block_size}"),
              "random": ("tab:gray", f"random {block_size}")}
    for ax, metric in zip(axes, metrics):
        rows = select(table, metric=metric)
        for name, (color, label) in styles.items():
            ax.plot(rows["layer"], rows[name], color=color, marker=".", linewidth=1, label=label)
        finish_axes(ax, f"{model_name(manifest)}: adjacency test [{metric}]", "held-out joint NIE / TE")
    return save_figure(fig, out)
