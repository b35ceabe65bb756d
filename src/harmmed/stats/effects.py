"""Aggregate per-pair mediation effects into means with seeded percentile-bootstrap CIs.

Every resample draws *pairs* (the unit of replication), never rows, and one draw of pair
indices is shared by every column of a pair x column matrix. That pairing keeps statistics
that combine many layers (a share, a ratio of sums, an argmax) internally consistent, and it
makes the CI that `summarize` reports for a group equal (up to float rounding) to
`bootstrap_ci` of that group's effects sorted by pair id with the same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

GROUP_KEYS: tuple[str, ...] = ("metric", "kind", "site", "layer", "window", "positions")
SUMMARY_COLUMNS: tuple[str, ...] = (
    "n_pairs",
    "mean_effect",
    "ci_low",
    "ci_high",
    "mean_te",
    "proportion_mediated",
    "n_excluded",
)
# Canonical orders so that outputs sort the same way whatever order the rows arrive in.
CATEGORY_ORDER: dict[str, tuple[str, ...]] = {
    "metric": ("harm", "refusal"),
    "kind": ("NIE", "NDE"),
    "site": ("residual", "mlp", "attn"),
    "severed": ("none", "mlp", "attn"),
}
NAMED_POSITIONS: tuple[str, ...] = ("all", "post", "last")


@dataclass(frozen=True)
class Bootstrap:
    """Settings of every pair bootstrap (the config's ``effects`` section), read once."""

    n_boot: int
    ci: float
    seed: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Bootstrap:
        effects = cfg["effects"]
        return cls(n_boot=effects["bootstrap_samples"], ci=effects["ci"], seed=effects["seed"])

    def kwargs(self) -> dict[str, Any]:
        """As keyword arguments of the plotting and summary functions."""
        return {"n_boot": self.n_boot, "ci": self.ci, "seed": self.seed}


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Draw `n_boot` bootstrap resamples of `range(n)`; the single source of randomness here."""
    if n < 1:
        raise ValueError("cannot bootstrap an empty sample")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(boot: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates; non-finite (undefined) replicates are dropped.

    A ratio whose denominator resamples to zero has no value, so it cannot vote for a bound.
    """
    finite = np.asarray(boot, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    values: np.ndarray,
    stat: Callable[..., Any] = np.mean,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of `stat` over a 1-D sample; `stat` must accept `axis=`."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1:
        raise ValueError("values must be one-dimensional")
    idx = resample_indices(values.size, n_boot, seed)
    return percentile_interval(np.asarray(stat(values[idx], axis=1), dtype=float), ci)


def paired_bootstrap_means(
    matrix: np.ndarray, n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Column means and their bootstrap replicates, resampling rows (pairs) once for all columns.

    Returns `(means, boot_means)` with shapes `(n_cols,)` and `(n_boot, n_cols)`.
    """
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or np.isnan(matrix).any():
        raise ValueError("expected a complete pairs x columns matrix")
    n = matrix.shape[0]
    idx = resample_indices(n, n_boot, seed)
    rows = np.repeat(np.arange(n_boot), n)
    counts = np.bincount(rows * n + idx.ravel(), minlength=n_boot * n).reshape(n_boot, n)
    return matrix.mean(axis=0), counts.astype(float) @ matrix / n


def paired_statistic(
    matrix: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_boot: int,
    ci: float,
    seed: int,
) -> tuple[float, float, float]:
    """Point value and percentile CI of a statistic of the column means of a pairs x columns matrix.

    `statistic` maps an array of column means `(..., n_cols)` to `(...)`, so it is evaluated on
    the full-sample means and on every paired resample in one vectorised call.
    """
    means, boot_means = paired_bootstrap_means(matrix, n_boot, seed)
    value = float(np.asarray(statistic(means)))
    low, high = percentile_interval(np.asarray(statistic(boot_means)), ci)
    return value, low, high


def pair_te(df: pd.DataFrame, metric: str) -> pd.Series:
    """Total effect y_harmful - y_benign per pair for one metric (first row of each pair)."""
    rows = df[df["metric"] == metric].sort_values("pair_id", kind="mergesort")
    first = rows.drop_duplicates("pair_id")
    return pd.Series(
        (first["y_harmful"] - first["y_benign"]).to_numpy(), index=first["pair_id"].to_numpy()
    )


def group_keys(df: pd.DataFrame) -> list[str]:
    """Grouping columns of a tidy effects table (`severed` joins the keys when present)."""
    return [*GROUP_KEYS, "severed"] if "severed" in df.columns else list(GROUP_KEYS)


def _rank(values: pd.Series, order: Iterable[str]) -> pd.Series:
    """Rank of each value in a canonical order; unknown values follow, alphabetically."""
    order = tuple(order)
    extra = sorted(set(values.astype(str)) - set(order))
    lookup = {name: i for i, name in enumerate((*order, *extra))}
    return values.astype(str).map(lookup)


def _position_rank(values: pd.Series) -> pd.Series:
    """Named position sets first (all, post, last), then integer positions ascending."""
    named = {name: i - len(NAMED_POSITIONS) for i, name in enumerate(NAMED_POSITIONS)}
    return values.astype(str).map(lambda v: named[v] if v in named else int(v))


def sort_key(column: pd.Series) -> pd.Series:
    """`DataFrame.sort_values` key giving every grouping column a deterministic order."""
    if column.name in CATEGORY_ORDER:
        return _rank(column, CATEGORY_ORDER[str(column.name)])
    if column.name == "positions":
        return _position_rank(column)
    return column


def sort_effects(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Stable canonical sort of a table by its grouping columns."""
    return df.sort_values(keys, key=sort_key, kind="mergesort").reset_index(drop=True)


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce key dtypes so CSV round trips and in-memory frames group identically."""
    out = df.copy()
    out["pair_id"] = out["pair_id"].astype(str)
    out["positions"] = out["positions"].astype(str)
    out["layer"] = out["layer"].astype(int)
    out["window"] = out["window"].astype(int)
    return out


def _proportions(
    effect: np.ndarray, te: np.ndarray, min_abs_te: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean effect / mean TE over pairs with |TE| >= min_abs_te, and how many pairs were left out.

    `effect` and `te` are pairs x groups with NaN where a pair is absent from a group.
    """
    present = ~np.isnan(effect)
    kept = present & (np.abs(np.nan_to_num(te)) >= min_abs_te)
    n_kept = kept.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        num = np.where(kept, effect, 0.0).sum(axis=0) / n_kept
        den = np.where(kept, te, 0.0).sum(axis=0) / n_kept
        prop = np.where((n_kept > 0) & (den != 0), num / den, np.nan)
    return prop, (present & ~kept).sum(axis=0)


def _bootstrap_columns(
    effect: np.ndarray, n_boot: int, ci: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """CI per column; columns sharing a set of pairs share one resample of those pairs."""
    low = np.full(effect.shape[1], np.nan)
    high = np.full(effect.shape[1], np.nan)
    present = ~np.isnan(effect)
    patterns: dict[bytes, list[int]] = {}
    for j in range(effect.shape[1]):
        patterns.setdefault(present[:, j].tobytes(), []).append(j)
    for cols in patterns.values():
        sub = effect[present[:, cols[0]]][:, cols]
        _, boot = paired_bootstrap_means(sub, n_boot, seed)
        alpha = (1.0 - ci) / 2.0
        low[cols], high[cols] = np.quantile(boot, [alpha, 1.0 - alpha], axis=0)
    return low, high


def summarize(
    df: pd.DataFrame,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    min_abs_te: float = 0.1,
) -> pd.DataFrame:
    """Mean effect per (metric, kind, site, layer, window, positions[, severed]) with a CI.

    Columns: the keys, then n_pairs, mean_effect, ci_low, ci_high, mean_te (over all pairs of
    the group), proportion_mediated (mean effect / mean TE over pairs with |TE| >= min_abs_te)
    and n_excluded (pairs left out of the proportion). Rows are in canonical key order.
    """
    keys = group_keys(df)
    data = _normalise(df).assign(te=lambda d: d["y_harmful"] - d["y_benign"])
    if data.duplicated([*keys, "pair_id"]).any():
        raise ValueError("a pair appears twice in one group")
    if data.empty:
        return pd.DataFrame(columns=[*keys, *SUMMARY_COLUMNS])
    effect = data.pivot(index="pair_id", columns=keys, values="effect").sort_index()
    te = data.pivot(index="pair_id", columns=keys, values="te").loc[effect.index, effect.columns]
    e, t = effect.to_numpy(dtype=float), te.to_numpy(dtype=float)
    low, high = _bootstrap_columns(e, n_boot, ci, seed)
    prop, n_excluded = _proportions(e, t, min_abs_te)
    out = effect.columns.to_frame(index=False)
    out["n_pairs"] = (~np.isnan(e)).sum(axis=0)
    out["mean_effect"] = np.nanmean(e, axis=0)
    out["ci_low"], out["ci_high"] = low, high
    out["mean_te"] = np.nanmean(t, axis=0)
    out["proportion_mediated"] = prop
    out["n_excluded"] = n_excluded
    return sort_effects(out, keys)


def te_shares(df: pd.DataFrame, min_abs_te: float) -> pd.DataFrame:
    """Rows of pairs with |TE| >= min_abs_te, with a ``share`` column = effect / TE."""
    te = df["y_harmful"] - df["y_benign"]
    kept = df[te.abs() >= min_abs_te]
    return kept.assign(share=kept["effect"] / (kept["y_harmful"] - kept["y_benign"]))
