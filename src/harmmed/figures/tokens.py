"""The token heatmaps: mean NIE / TE of each token role of the request, by prompt category."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..constants import TOKEN_ROLE_LABELS as ROLE_LABELS
from ..constants import TOKEN_ROLES as ROLES
from .plotting import MISSING_CELL_COLOR, metrics_in, model_name, new_figure, save_figure, styled, symmetric_norm


# ---------------------------------------------------------------- figure
def _get(item: Any, name: str) -> Any:
    return item[name] if isinstance(item, Mapping) else getattr(item, name)


def pair_categories(inputs: Iterable[Any]) -> dict[str, str]:
    """Category by pair id, from inputs.jsonl rows (dicts) or EncodedPair objects."""
    return {str(_get(x, "pair_id")): str(_get(x, "category")) for x in inputs}


def role_means(token_df: pd.DataFrame, metric: str, categories: Mapping[str, str]) -> pd.DataFrame:
    """Per pair and role: the mean NIE over the role's positions (pairs x ROLES, NaN if absent)."""
    rows = token_df[(token_df["metric"].astype(str) == metric) & (token_df["kind"] == "NIE")]
    rows = rows[rows["role"].isin(ROLES)]
    means = rows.groupby([rows["pair_id"].astype(str), "role"], sort=True)["effect"].mean()
    table = means.unstack("role").reindex(columns=list(ROLES))
    table["category"] = table.index.map(lambda p: categories.get(p, "unknown"))
    return table


def category_grid(table: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Categories x roles grid of the mean over pairs, with a final row over all pairs."""
    by_cat = table.groupby("category", sort=True)
    labels = [f"{cat} (n={len(part)})" for cat, part in by_cat]
    grid = [part[list(ROLES)].mean(axis=0).to_numpy(dtype=float) for _, part in by_cat]
    labels.append(f"all pairs (n={len(table)})")
    grid.append(table[list(ROLES)].mean(axis=0).to_numpy(dtype=float))
    return labels, np.vstack(grid)


def annotate(ax, grid: np.ndarray, norm) -> None:
    """Write each cell's value; white text on saturated cells."""
    for (i, j), value in np.ndenumerate(grid):
        if not np.isfinite(value):
            ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="0.4")
            continue
        dark = abs(value) > 0.6 * norm.vmax
        ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7,
                color="white" if dark else "black")


def token_heatmap_figure(labels: list[str], grid: np.ndarray, title: str, metric: str):
    """One categories x roles panel with a centred diverging colour scale."""
    import matplotlib
    from matplotlib.ticker import FuncFormatter


    width, height = 6.4, 1.6 + 0.32 * len(labels)
    fig, axes = new_figure(1, width=width, height=height, bottom=0.75)
    fig.subplots_adjust(left=1.9 / width, right=1 - 0.3 / width)
    ax = axes[0]
    norm = symmetric_norm([grid])
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=MISSING_CELL_COLOR)
    image = ax.imshow(grid, aspect="auto", cmap=cmap, norm=norm, interpolation="none")
    ax.set_xticks(range(len(ROLES)), [ROLE_LABELS[r] for r in ROLES], fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.grid(False)
    annotate(ax, grid, norm)
    ax.set_title(title)
    ax.set_xlabel("token role")
    bar = fig.colorbar(image, ax=ax, label=f"mean embedding NIE ({metric})")
    bar.formatter = FuncFormatter(lambda v, _pos: f"{v:.3g}")  # no offset text over the title
    bar.update_ticks()
    return fig


def plot_token_heatmap(token_df: pd.DataFrame, inputs: Iterable[Any], manifest: Mapping[str, Any],
                       out: str | Path) -> list[Path]:
    """Categories x roles heatmap of the mean embedding NIE, written as ``<out>_<metric>``.

    Each cell averages over a pair's positions of that role first, then over the pairs of the
    category, so long requests do not outweigh short ones.
    """

    categories = pair_categories(inputs)

    @styled
    def draw(metric: str) -> list[Path]:
        labels, grid = category_grid(role_means(token_df, metric, categories))
        fig = token_heatmap_figure(labels, grid, f"{model_name(manifest)}: embedding NIE by token role, {metric}",
                                   metric)
        return save_figure(fig, f"{out}_{metric}")

    written: list[Path] = []
    for metric in metrics_in(token_df):
        written += draw(metric)
    return written
