"""Token analysis: NIE of the embeddings at each prompt position, grouped by the position's role.

Patching the embedding output at one position changes the benign run only where the harmful
token differs, because an embedding depends on its own token alone (plus, in some families, a
position embedding that is shared by both prompts). For token-aligned minimal pairs the NIE is
therefore exactly zero outside the differing span, and the engine returns those rows without a
forward pass; the analysis is informative about *which* differing tokens carry the signal.

Roles, in plotting order: ``template`` (chat-template tokens before the user's request),
``before_span`` and ``after_span`` (request tokens around the span), ``span`` (from the first
to the last position where the harmful and benign ids differ, inclusive; identical tokens
enclosed by differing ones count as span) and ``post`` (the post-instruction tokens). Unpaired
prompts differ in length: only their right-aligned post-instruction positions correspond, so
every other position of the base (benign) prompt is ``unaligned`` and is not patched.

Torch-dependent modules are imported inside functions so the plotting half of this module runs
in the analysis environment, which has no torch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .prompts import EncodedPair, chat_text, read_pairs

if TYPE_CHECKING:
    from .engine import MediationEngine, Run

log = logging.getLogger("harmmed")

ROLES: tuple[str, ...] = ("template", "before_span", "span", "after_span", "post")
UNALIGNED = "unaligned"
ROLE_LABELS = {"template": "template", "before_span": "before\nspan", "span": "span",
               "after_span": "after\nspan", "post": "post-\ninstr."}


# ---------------------------------------------------------------- roles
def request_token_bounds(tokenizer, request: str) -> tuple[list[int], int]:
    """Ids of the templated request and the number of template tokens before the request.

    A token is a template token when its characters end at or before the request's first
    character, so a token that carries a leading space into the request counts as request.
    """
    text = chat_text(tokenizer, request)
    start = text.rfind(request)
    if start < 0:
        raise ValueError(f"chat template does not contain the request verbatim: {request!r}")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    n_template = sum(1 for _start, stop in encoded["offset_mapping"] if stop <= start)
    return list(encoded["input_ids"]), n_template


def differing_positions(harmful_ids: Sequence[int], benign_ids: Sequence[int]) -> list[int]:
    """Positions where two token-aligned prompts differ."""
    return [i for i, (h, b) in enumerate(zip(harmful_ids, benign_ids)) if h != b]


def aligned_roles(n_tokens: int, n_template: int, diff: Sequence[int],
                  post: Sequence[int]) -> list[str]:
    """Roles of a token-aligned prompt; span beats post and template if they ever overlap."""
    post_set = set(post)
    first, last = (min(diff), max(diff)) if diff else (n_tokens, n_tokens)
    roles = []
    for p in range(n_tokens):
        if first <= p <= last:
            roles.append("span")
        elif p in post_set:
            roles.append("post")
        elif p < n_template:
            roles.append("template")
        else:
            roles.append("before_span" if p < first else "after_span")
    return roles


def unpaired_roles(harmful_ids: Sequence[int], benign_ids: Sequence[int],
                   post_positions: Sequence[int]) -> list[str]:
    """Roles over the base (benign) prompt: right-aligned post positions, the rest unaligned."""
    shift = len(benign_ids) - len(harmful_ids)
    post = {p + shift for p in post_positions}
    return ["post" if p in post else UNALIGNED for p in range(len(benign_ids))]


def position_roles(tokenizer, request: str, harmful_ids: Sequence[int], benign_ids: Sequence[int],
                   post_positions: Sequence[int], noise_span: Sequence[int] | None = None) -> list[str]:
    """Role of each prompt position (indexing the NIE's base: the benign run, or in noise mode
    the corrupted harmful run, whose ``noise_span`` is the span).

    ``request`` is the harmful request; its encoding must reproduce ``harmful_ids``, so a
    stale pairs file cannot silently mislabel positions.
    """
    if noise_span is None and len(harmful_ids) != len(benign_ids):
        return unpaired_roles(harmful_ids, benign_ids, post_positions)
    ids, n_template = request_token_bounds(tokenizer, request)
    if ids != list(harmful_ids):
        raise ValueError(f"the request {request!r} does not encode to the stored harmful ids")
    span = noise_span if noise_span is not None else differing_positions(harmful_ids, benign_ids)
    return aligned_roles(len(ids), n_template, span, post_positions)


# ---------------------------------------------------------------- rows
def token_rows(engine: MediationEngine, pair: EncodedPair, roles: Sequence[str],
               runs: tuple[Run, Run] | None = None, progress=None) -> list[dict]:
    """NIE of the embedding output at each aligned prompt position, one row per metric.

    Identical positions (every non-span position of a minimal pair) cost no forward pass: the
    engine recognises the identity patch and returns the benign outcome, an effect of 0.
    """
    from . import mediation
    from .engine import Patch

    runs = runs if runs is not None else mediation.clean_runs(engine, pair)
    cells = [
        (mediation.Cell("NIE", "residual", -1, 1, str(p)), (Patch("residual", -1, (p,)),))
        for p, role in enumerate(roles) if role != UNALIGNED
    ]
    rows = list(mediation.run_cells(engine, pair, cells, runs, progress=progress))
    for row in rows:
        row["role"] = roles[int(row["positions"])]
    return rows


def pair_requests(pairs_path: str | Path) -> dict[str, str]:
    """Harmful request text by pair id (the inputs file stores ids only)."""
    return {row["pair_id"]: row["harmful"] for row in read_pairs(pairs_path)}


def pair_roles(tokenizer, pairs: Sequence[EncodedPair], requests: Mapping[str, str]) -> dict[str, list[str]]:
    """Role of every position of every pair, by pair id (see :func:`position_roles`)."""
    return {p.pair_id: position_roles(tokenizer, requests[p.pair_id], p.harmful_ids, p.benign_ids,
                                      p.post_positions, p.noise_span) for p in pairs}


def aligned_count(roles: Sequence[str]) -> int:
    """Interventions one pair costs: its aligned positions."""
    return sum(role != UNALIGNED for role in roles)


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

    from .plotting import MISSING_CELL_COLOR, new_figure, symmetric_norm

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
    from .plotting import metrics_in, model_name, save_figure, styled

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

