"""Probe analysis (claim C4): at which layer harmfulness becomes linearly decodable.

Per layer, a standardized logistic regression is trained on the residual stream at the last
prompt position (the last post-instruction token, where the response starts) to tell the
harmful prompt of a pair from its benign counterpart. Choices (ours; the paper's are not
public):

- Cross-validation is grouped by pair (``StratifiedGroupKFold``, shuffled with the seed), so
  the two prompts of a pair never sit on both sides of a split; one split serves every layer.
- Accuracy is that of the pooled out-of-fold predictions. Its CI is the Wilson score interval
  over prompts (it treats the prompts as independent, which slightly understates the width
  for paired data).
- The ``shuffled`` control permutes the labels within each pair (a seeded coin flip for a
  harmful/benign pair), which keeps the groups and the class balance but breaks the link
  between label and content; it runs through the same CV and should sit near chance.
- Layer -1 (the embedding output) is reported but never enters the claim; relative depth of
  decoder layer l is (l + 1) / n_layers, so the final layer has depth 1.

torch and scikit-learn are imported where used: the figure and claim-row half of this module
runs in the analysis environment, which has no torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .constants import PROBE_COLUMNS, wilson_interval
from .prompts import EncodedPair

if TYPE_CHECKING:
    from .engine import MediationEngine

log = logging.getLogger("harmmed")

CONDITIONS = ("real", "shuffled")
PROBE_CI = 0.95
MAX_ITER = 2000


def shuffle_within_groups(labels: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """Permute labels inside each group (pair-level control); groups visited in sorted order."""
    rng = np.random.default_rng(seed)
    out = labels.copy()
    for group in np.unique(groups):
        idx = np.flatnonzero(groups == group)
        out[idx] = labels[idx][rng.permutation(len(idx))]
    return out


def grouped_splits(labels: np.ndarray, groups: np.ndarray, folds: int,
                   seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, pair-grouped folds (at most one fold per group)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = min(folds, len(np.unique(groups)))
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(labels)), labels, groups))


def out_of_fold_predictions(x: np.ndarray, labels: np.ndarray,
                            splits: Sequence[tuple[np.ndarray, np.ndarray]], C: float) -> np.ndarray:
    """Each prompt's label predicted by a probe fit without its pair."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.empty(len(labels), dtype=labels.dtype)
    for train, test in splits:
        if len(np.unique(labels[train])) < 2:  # one class only: predict it
            pred[test] = labels[train][0]
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=MAX_ITER))
        probe.fit(x[train], labels[train])
        pred[test] = probe.predict(x[test])
    return pred


def probe_accuracy_by_layer(features: Mapping[int, np.ndarray], labels: Sequence[int],
                            groups: Sequence[Any], folds: int, C: float, seed: int,
                            threads: int = 1) -> pd.DataFrame:
    """Out-of-fold probe accuracy per layer for real and pair-shuffled labels (PROBE_COLUMNS).

    BLAS runs on ``threads`` threads: many small fits lose far more to thread hand-offs than
    they gain, and a fixed count keeps the floating-point reductions reproducible.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=max(1, threads)):
        return _probe_table(features, labels, groups, folds, C, seed)


def _probe_table(features: Mapping[int, np.ndarray], labels: Sequence[int], groups: Sequence[Any],
                 folds: int, C: float, seed: int) -> pd.DataFrame:
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups)
    shuffled = shuffle_within_groups(labels, groups, seed)
    rows = []
    for condition, y in zip(CONDITIONS, (labels, shuffled)):
        splits = grouped_splits(y, groups, folds, seed)
        for layer in sorted(features):
            x = np.asarray(features[layer], dtype=np.float64)
            correct = out_of_fold_predictions(x, y, splits, C) == y
            accuracy = float(np.mean(correct))
            low, high = wilson_interval(int(correct.sum()), len(y), PROBE_CI)
            rows.append(dict(layer=int(layer), condition=condition, accuracy=accuracy, ci_low=low,
                             ci_high=high, n_prompts=len(y), folds=len(splits), seed=seed))
    return pd.DataFrame(rows, columns=PROBE_COLUMNS)


# ---------------------------------------------------------------- features and stage
def probe_features(engine: MediationEngine, pairs: Sequence[EncodedPair]
                   ) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """Features per layer (prompts x d_model; layer -1 = embeddings), labels (1 harmful, 0
    benign), groups (pair index): the residual stream at each prompt's last position.

    Prompts are ordered pair by pair, harmful first. Only prompt tokens are run, equal-length
    prompts in one batch over their shared template prefix.
    """
    prompts = [ids for pair in pairs for ids in (pair.harmful_ids, pair.benign_ids)]
    residuals = engine.last_residuals(prompts)
    features = {layer: residuals[:, layer + 1] for layer in range(-1, engine.sites.n_layers)}
    labels = np.tile(np.array([1, 0], dtype=np.int64), len(pairs))
    groups = np.repeat(np.arange(len(pairs), dtype=np.int64), 2)
    return features, labels, groups


# ---------------------------------------------------------------- claim C4
def relative_depth(layer: int, n_layers: int) -> float:
    """(layer + 1) / n_layers: decoder layer 0 -> 1/n, the final layer -> 1."""
    return (layer + 1) / n_layers


def first_layer(layers: np.ndarray, mask: np.ndarray) -> int | None:
    """Earliest layer where ``mask`` holds, or None."""
    hits = layers[mask]
    return int(hits.min()) if hits.size else None


def c4_row(probe_df: pd.DataFrame, n_layers: int, level: float, threshold: float,
           n_boot: int = 0, ci: float = PROBE_CI, seed: int = 0) -> dict[str, Any]:
    """C4 claim row: relative depth of the first decoder layer whose probe accuracy >= level.

    CI construction (analytic, from the per-layer Wilson intervals recomputed at level
    ``ci``): the low end is the depth of the first layer whose interval *reaches* the level
    (ci_high >= level: the earliest layer that may have reached it), the high end that of the
    first layer whose interval lies *at or above* it (ci_low >= level: the earliest layer that
    surely has); NaN when no layer qualifies. Supported when the whole CI lies below the
    threshold. ``n_boot`` and ``seed`` are accepted for a uniform claim-row signature and
    unused. No layer reaching the level gives a NaN value and ``not supported``.
    """
    from .claims import verdict

    real = probe_df[(probe_df["condition"] == "real") & (probe_df["layer"].astype(int) >= 0)]
    real = real[real["layer"].astype(int) < n_layers].sort_values("layer", kind="mergesort")
    layers = real["layer"].to_numpy(dtype=int)
    accuracy = real["accuracy"].to_numpy(dtype=float)
    bounds = [wilson_interval(round(a * int(n)), int(n), ci) for a, n in zip(accuracy, real["n_prompts"])]
    low = np.array([b[0] for b in bounds]) if bounds else np.empty(0)
    high = np.array([b[1] for b in bounds]) if bounds else np.empty(0)

    def depth(layer: int | None) -> float:
        return float("nan") if layer is None else relative_depth(layer, n_layers)

    value = depth(first_layer(layers, accuracy >= level))
    ci_low = depth(first_layer(layers, high >= level))
    ci_high = depth(first_layer(layers, low >= level))
    judged = "not supported" if math.isnan(value) else verdict(ci_low, ci_high, threshold, above=False)
    return dict(claim="C4", statistic=f"probe_rel_depth_acc_ge_{level:g}", value=value,
                ci_low=ci_low, ci_high=ci_high, threshold=threshold, verdict=judged)


# ---------------------------------------------------------------- figure
PROBE_STYLE = {"real": ("tab:red", "-", "real labels"),
               "shuffled": ("tab:gray", "--", "pair-shuffled labels (control)")}


def plot_probe(probe_df: pd.DataFrame, manifest: Mapping[str, Any], out: str | Path,
               level: float = 0.9) -> list[Path]:
    """Out-of-fold accuracy vs layer, real vs shuffled labels, Wilson CI bands, level dashed."""
    from .plotting import BAND_ALPHA, finish_axes, model_name, new_figure, save_figure, styled

    @styled
    def draw() -> list[Path]:
        fig, axes = new_figure(1, width=5.2)
        ax = axes[0]
        for condition in CONDITIONS:
            part = probe_df[probe_df["condition"] == condition].sort_values("layer", kind="mergesort")
            if part.empty:
                continue
            color, style, label = PROBE_STYLE[condition]
            x = part["layer"].to_numpy(dtype=float)
            ax.plot(x, part["accuracy"], color=color, linestyle=style, marker=".", markersize=3,
                    linewidth=1.2, label=label)
            ax.fill_between(x, part["ci_low"], part["ci_high"], color=color, alpha=BAND_ALPHA,
                            linewidth=0)
        ax.axhline(level, color="black", linestyle="--", linewidth=0.9, label=f"level {level:g}")
        ax.axhline(0.5, color="black", linestyle=":", linewidth=0.8, label="chance")
        n = int(probe_df["n_prompts"].max()) if len(probe_df) else 0
        finish_axes(ax, f"{model_name(manifest)}: harmfulness probe ({n} prompts)",
                    "out-of-fold accuracy", xlabel="layer")
        ax.set_xlabel("layer (-1 = embeddings)")
        ax.set_ylim(0.0, 1.02)
        return save_figure(fig, out)

    return draw()

