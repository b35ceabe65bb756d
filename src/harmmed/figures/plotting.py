"""Figures of the layer, module, severed-path, heatmap and cross-model analyses.

Figures are built on bare `matplotlib.figure.Figure` objects (no pyplot global state, Agg
canvas) inside a fixed rc context, and saved without timestamps or version strings, so the
same inputs give byte-identical PNG and PDF files. Every function takes an output path
without suffix and writes `<out>.png` and `<out>.pdf`; it returns the paths written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator

from ..constants import metrics_in
from ..stats.effects import CATEGORY_ORDER, pair_te, summarize

STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.formatter.limits": (-2, 4),  # short tick labels: small effects get a x1e-3 offset
}
PNG_METADATA = {"Software": None}
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}
POSITION_COLORS = {"all": "tab:blue", "post": "tab:orange", "last": "tab:green"}
SITE_COLORS = {"residual": "tab:gray", "mlp": "tab:red", "attn": "tab:blue"}
SEVERED_COLORS = {"none": "black", "mlp": "tab:red", "attn": "tab:blue"}
METRIC_LABELS = {"harm": "harm: mean log p(target)", "refusal": "refusal log-odds"}
BAND_ALPHA = 0.2
MISSING_CELL_COLOR = "0.85"
P = ParamSpec("P")
R = TypeVar("R")


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """`<out>.png`, `<out>.pdf`; suffixes are appended so names containing dots survive."""
    out = Path(out)
    return out.with_name(out.name + ".png"), out.with_name(out.name + ".pdf")


def styled(func: Callable[P, R]) -> Callable[P, R]:
    """Run a plotting function under matplotlib's defaults plus STYLE, whatever the user's rc."""
    return matplotlib.style.context(["default", STYLE])(func)


def save_figure(fig: Figure, out: str | Path) -> list[Path]:
    """Save PNG and PDF with metadata stripped of dates and versions (byte-stable)."""
    png, pdf = output_paths(out)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, metadata=PNG_METADATA)
    fig.savefig(pdf, metadata=PDF_METADATA)
    return [png, pdf]


def new_figure(n_panels: int, width: float = 4.6, height: float = 3.4, n_rows: int = 1,
               bottom: float = 0.55, gap: float = 0.95) -> tuple[Figure, np.ndarray]:
    """A grid of panels (flattened axes) with fixed margins in inches.

    Fixed margins instead of a layout engine: constrained layout measures every label and
    more than doubles the rendering time.
    """
    n_cols = max(1, int(np.ceil(n_panels / n_rows)))
    fig_w, fig_h = width * n_cols, height * n_rows
    fig = Figure(figsize=(fig_w, fig_h))
    fig.subplots_adjust(left=0.85 / fig_w, right=1 - 0.2 / fig_w,
                        bottom=bottom / fig_h, top=1 - 0.4 / fig_h,
                        wspace=gap / (width - gap), hspace=(bottom + 0.45) / (height - 1.0))
    return fig, fig.subplots(n_rows, n_cols, squeeze=False).ravel()


def is_position_index(positions: pd.Series) -> pd.Series:
    """True for rows whose `positions` is one absolute position (heatmap rows), not a set."""
    return positions.astype(str).str.lstrip("-").str.isdigit()


def select(df: pd.DataFrame, **filters: Any) -> pd.DataFrame:
    """Rows matching every filter (compared as strings so CSV and in-memory frames agree)."""
    mask = np.ones(len(df), dtype=bool)
    for key, value in filters.items():
        mask &= (df[key].astype(str) == str(value)).to_numpy()
    return df[mask]


def mean_te(df: pd.DataFrame, metric: str) -> float:
    """Mean total effect over the pairs of one metric."""
    te = pair_te(df, metric)
    return float(te.mean()) if len(te) else float("nan")


def draw_curve(ax: Axes, summary: pd.DataFrame, label: str, color: str,
               linestyle: str = "-", x: np.ndarray | None = None, scale: float = 1.0, band: bool = True) -> None:
    """Mean effect vs layer with its bootstrap CI as a band (all divided by `scale`)."""
    if summary.empty:
        return
    s = summary.sort_values("layer", kind="mergesort")
    xs = s["layer"].to_numpy(dtype=float) if x is None else x
    ax.plot(xs, s["mean_effect"] / scale, color=color, linestyle=linestyle, marker=".",
            markersize=3, linewidth=1.2, label=label)
    if band:
        ax.fill_between(xs, s["ci_low"] / scale, s["ci_high"] / scale, color=color,
                        alpha=BAND_ALPHA, linewidth=0)


def plural(n_pairs: int) -> str:
    """'mean of 1 pair' / 'mean of 3 pairs'."""
    return f"mean of {n_pairs} pair{'' if n_pairs == 1 else 's'}"


def finish_axes(ax: Axes, title: str, ylabel: str, xlabel: str = "layer") -> None:
    """Title, labels, zero line, integer layer ticks and legend."""
    if xlabel == "layer":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", frameon=False)


def model_name(manifest: Mapping[str, Any]) -> str:
    """Short model label for titles."""
    return str(manifest.get("name", "model"))


@styled
def plot_layer_curves(layer_df: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path,
                      n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> list[Path]:
    """Residual NIE and NDE vs layer for positions all/post/last, one panel per metric. Only the
    NIE curves get CI bands: the NDE's bands span about the TE's own spread and hid the NIE."""
    curves = select(layer_df[~is_position_index(layer_df["positions"])], site="residual",
                    window=1)
    summary = summarize(curves, n_boot=n_boot, ci=ci, seed=seed)
    metrics = metrics_in(curves)
    fig, axes = new_figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        for positions, color in POSITION_COLORS.items():
            for kind, style in (("NIE", "-"), ("NDE", ":")):
                part = select(summary, metric=metric, kind=kind, positions=positions)
                draw_curve(ax, part, f"{kind} ({positions})", color, style, band=kind == "NIE")
        ax.axhline(mean_te(curves, metric), color="black", linestyle="--", linewidth=1.0,
                   label="TE")
        finish_axes(ax, f"{model_name(manifest)}: residual stream, {metric}",
                    f"effect ({METRIC_LABELS.get(metric, metric)})")
        ax.legend(loc="center left", frameon=False, fontsize=6, ncol=2)
    return save_figure(fig, out)


@styled
def plot_module_curves(module_df: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path,
                       n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> list[Path]:
    """MLP vs attention NIE vs layer, single-layer (solid) and windowed (dashed).

    Rows of panels are metrics, columns are position sets.
    """
    curves = module_df[~is_position_index(module_df["positions"])]
    summary = summarize(select(curves, kind="NIE"), n_boot=n_boot, ci=ci, seed=seed)
    metrics = metrics_in(curves)
    positions = [p for p in ("all", "post", "last") if p in set(summary["positions"])]
    windows = sorted(int(w) for w in set(summary["window"]))
    fig, axes = new_figure(len(metrics) * len(positions), n_rows=len(metrics))
    grid = axes.reshape(len(metrics), len(positions))
    for i, metric in enumerate(metrics):
        for j, pos in enumerate(positions):
            ax = grid[i, j]
            for site in ("mlp", "attn"):
                for window in windows:
                    part = select(summary, metric=metric, site=site, positions=pos, window=window)
                    label = f"{site} (window {window})" if window > 1 else f"{site} (single)"
                    draw_curve(ax, part, label, SITE_COLORS[site], "-" if window == 1 else "--")
            finish_axes(ax, f"{model_name(manifest)}: {metric}, {pos} positions",
                        f"module NIE ({METRIC_LABELS.get(metric, metric)})")
    return save_figure(fig, out)


@styled
def plot_severed(severed_df: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path,
                 n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> list[Path]:
    """Residual NIE vs layer with later MLP or attention outputs frozen, one panel per metric."""
    summary = summarize(select(severed_df, kind="NIE", site="residual"),
                        n_boot=n_boot, ci=ci, seed=seed)
    metrics = metrics_in(severed_df)
    fig, axes = new_figure(len(metrics))
    labels = {"none": "no severing", "mlp": "later MLPs frozen", "attn": "later attn frozen"}
    for ax, metric in zip(axes, metrics):
        for cut, color in SEVERED_COLORS.items():
            draw_curve(ax, select(summary, metric=metric, severed=cut), labels[cut], color)
        ax.axhline(mean_te(severed_df, metric), color="black", linestyle="--", linewidth=1.0,
                   label="TE")
        finish_axes(ax, f"{model_name(manifest)}: severed paths, {metric}",
                    f"residual NIE ({METRIC_LABELS.get(metric, metric)})")
    return save_figure(fig, out)


@styled
def plot_cross_model(layer_dfs: Mapping[str, pd.DataFrame],
                     manifests: Mapping[str, Mapping[str, Any]], out: str | Path,
                     n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> list[Path]:
    """Residual NIE (post positions) / TE vs relative depth layer/(n-1), one line per model.

    Bands are the NIE's CI divided by the full-sample mean TE (TE held fixed).
    """
    names = sorted(layer_dfs)
    metrics = metrics_in(*(layer_dfs[n] for n in names))
    colors = matplotlib.colormaps["tab10"]
    fig, axes = new_figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        for k, name in enumerate(names):
            n_layers = int(manifests[name]["n_layers"])
            rows = select(layer_dfs[name], metric=metric, kind="NIE", site="residual",
                          window=1, positions="post")
            summary = summarize(rows[rows["layer"].astype(int) >= 0], n_boot=n_boot, ci=ci,
                                seed=seed)
            depth = np.sort(summary["layer"].to_numpy(dtype=float)) / max(n_layers - 1, 1)
            draw_curve(ax, summary, name, colors(k % 10), x=depth,
                       scale=mean_te(layer_dfs[name], metric))
        ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8, label="TE")
        finish_axes(ax, f"Residual NIE (post positions), {metric}", "NIE / TE",
                    xlabel="relative depth (layer / (n_layers - 1))")
    return save_figure(fig, out)


def heatmap_offsets(inputs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Index of the last prompt token per pair, to right-align absolute positions."""
    return {str(row["pair_id"]): len(row["harmful_ids"]) - 1 for row in inputs}


def heatmap_rows(df: pd.DataFrame, metric: str, site: str,
                 last_index: Mapping[str, int]) -> pd.DataFrame:
    """Per-position NIE rows of one site and metric with an `offset` from the last token."""
    rows = select(df, metric=metric, kind="NIE", site=site, window=1)
    rows = rows[is_position_index(rows["positions"])]
    rows = rows[rows["pair_id"].astype(str).isin(last_index)]
    offsets = rows["positions"].astype(int) - rows["pair_id"].astype(str).map(last_index)
    return rows.assign(offset=offsets.astype(int))


def heatmap_grid(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean NIE over pairs as a layers x offsets grid (NaN where no pair has the cell)."""
    cells = rows.groupby(["layer", "offset"], sort=True)["effect"].mean()
    grid = cells.unstack("offset").sort_index().sort_index(axis=1)
    return (grid.index.to_numpy(dtype=int), grid.columns.to_numpy(dtype=int),
            grid.to_numpy(dtype=float))


def clean_token(token: str) -> str:
    """Printable tick label for a token (escapes newlines and mathtext dollars)."""
    text = token.replace("\n", "\\n").replace("\t", "\\t").replace("$", r"\$")
    return text.replace("\u0120", " ").replace("\u010a", "\\n")


def offset_labels(offsets: np.ndarray, tokens: Mapping[str, Sequence[str]] | None,
                  pair_ids: Sequence[str]) -> list[str]:
    """Tick labels: the offset, plus the token of the first heatmap pair that has tokens."""
    seq = next((list(tokens[p]) for p in sorted(pair_ids) if tokens and p in tokens), None)
    if seq is None:
        return [str(o) for o in offsets]
    return [f"{clean_token(seq[len(seq) - 1 + o])} ({o})" if 0 <= len(seq) - 1 + o < len(seq)
            else str(o) for o in offsets]


def symmetric_norm(values: Iterable[np.ndarray]) -> Normalize:
    """Limits +-max|value|, so a diverging colormap is centred at 0 (faster than TwoSlopeNorm)."""
    finite = [np.abs(v[np.isfinite(v)]) for v in values]
    vmax = max((float(f.max()) for f in finite if f.size), default=0.0) or 1.0
    return Normalize(vmin=-vmax, vmax=vmax)


def draw_heatmap(ax: Axes, layers: np.ndarray, offsets: np.ndarray, grid: np.ndarray,
                 norm: Normalize, labels: list[str], title: str) -> AxesImage:
    """One layer x offset panel (grey = no pair has the cell); the caller adds the colorbar."""
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=MISSING_CELL_COLOR)
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap=cmap, norm=norm,
                      interpolation="none",
                      extent=(-0.5, len(offsets) - 0.5, layers[0] - 0.5, layers[-1] + 0.5))
    step = max(1, int(np.ceil(len(offsets) / 40)))
    ticks = np.arange(0, len(offsets), step)
    ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=90, fontsize=6)
    ax.grid(False)
    ax.set_title(title)
    ax.set_xlabel("prompt position (offset from the last prompt token)")
    ax.set_ylabel("layer (-1 = embeddings)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return image


@styled
def plot_heatmaps(heatmap_df: pd.DataFrame, inputs: Iterable[Mapping[str, Any]],
                  tokens: Mapping[str, Sequence[str]] | None,
                  manifest: Mapping[str, Any], out: str | Path) -> list[Path]:
    """Layer x position NIE heatmaps (residual, mlp, attn), one figure per metric.

    Writes `<out>_<metric>.png/.pdf` for every metric. Positions are right-aligned
    (offset 0 = last prompt token) and restricted to offsets present; cells are the mean NIE
    over the heatmap pairs. MLP and attention share a colour scale so they compare directly.
    A metric without heatmap rows (unpaired prompts, or ``heatmap.n_pairs: 0``) gets a figure
    that says so, so the workflow's outputs exist whatever the config.
    """
    last_index = heatmap_offsets(inputs)
    written: list[Path] = []
    for metric in metrics_in(heatmap_df) or list(CATEGORY_ORDER["metric"]):
        rows = {site: heatmap_rows(heatmap_df, metric, site, last_index) for site in ("residual", "mlp", "attn")}
        rows = {site: r for site, r in rows.items() if len(r)}
        if rows:
            fig = heatmap_figure(rows, tokens, f"{model_name(manifest)}", metric)
        else:
            fig, axes = new_figure(1)
            axes[0].set_axis_off()
            axes[0].text(0.5, 0.5, f"{model_name(manifest)} [{metric}]: no layer x position heatmap\n"
                         "(unpaired prompts have no position-aligned counterpart)", ha="center", va="center")
        written += save_figure(fig, f"{out}_{metric}")
    return written


def heatmap_figure(rows: Mapping[str, pd.DataFrame],
                   tokens: Mapping[str, Sequence[str]] | None, model: str,
                   metric: str) -> Figure:
    """Side-by-side site heatmaps; residual has its own colour scale, mlp and attn share one."""
    grids = {site: heatmap_grid(r) for site, r in rows.items()}
    fig, axes = new_figure(len(grids), width=5.4, height=4.4, bottom=1.3, gap=1.7)
    panels = dict(zip(grids, axes))
    for sites, label in ((["residual"], "residual"), (["mlp", "attn"], "mlp and attn, shared")):
        present = [site for site in sites if site in grids]
        if not present:
            continue
        norm = symmetric_norm([grids[site][2] for site in present])
        for site in present:
            layers, offsets, grid = grids[site]
            pair_ids = sorted(set(rows[site]["pair_id"].astype(str)))
            image = draw_heatmap(panels[site], layers, offsets, grid, norm,
                                 offset_labels(offsets, tokens, pair_ids),
                                 f"{model}: {site} NIE, {metric} ({plural(len(pair_ids))})")
        fig.colorbar(image, ax=[panels[site] for site in present],
                     label=f"mean NIE on {metric} ({label})")
    return fig
