"""Probe analysis (claim C4): at which layer harmfulness becomes linearly decodable.

Per layer and probed position, a standardized logistic regression is trained on the residual
stream to tell the harmful prompt of a pair from its benign counterpart. Two positions are
probed: the last token of the request itself (``instruction``: where the prompt has been read,
the position C4 judges) and the last prompt token (``last``: where the response starts, after
the chat template's tokens). Choices (ours; the paper's are not
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

scikit-learn is imported where used. The C4 row read off the probe table is
:func:`harmmed.stats.claims.c4_row`, the figure :mod:`harmmed.figures.probe`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..constants import PROBE_CI, PROBE_COLUMNS, PROBE_POSITIONS
from ..constants import PROBE_CONDITIONS as CONDITIONS
from ..datasets.prompts import EncodedPair
from ..stats.rates import wilson_interval

if TYPE_CHECKING:
    from ..patching.engine import MediationEngine

log = logging.getLogger("harmmed")

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


def probe_accuracy_by_layer(features: Mapping[str, Mapping[int, np.ndarray]], labels: Sequence[int],
                            groups: Sequence[Any], folds: int, C: float, seed: int,
                            threads: int = 1) -> pd.DataFrame:
    """Out-of-fold probe accuracy per position and layer for real and pair-shuffled labels
    (PROBE_COLUMNS); ``features``: position -> layer -> prompts x d_model.

    BLAS runs on ``threads`` threads: many small fits lose far more to thread hand-offs than
    they gain, and a fixed count keeps the floating-point reductions reproducible.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=max(1, threads)):
        return _probe_table(features, labels, groups, folds, C, seed)


def _probe_table(features: Mapping[str, Mapping[int, np.ndarray]], labels: Sequence[int], groups: Sequence[Any],
                 folds: int, C: float, seed: int) -> pd.DataFrame:
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups)
    shuffled = shuffle_within_groups(labels, groups, seed)
    rows = []
    for position, by_layer in features.items():
        for condition, y in zip(CONDITIONS, (labels, shuffled)):
            splits = grouped_splits(y, groups, folds, seed)
            for layer in sorted(by_layer):
                x = np.asarray(by_layer[layer], dtype=np.float64)
                correct = out_of_fold_predictions(x, y, splits, C) == y
                accuracy = float(np.mean(correct))
                low, high = wilson_interval(int(correct.sum()), len(y), PROBE_CI)
                rows.append(dict(position=position, layer=int(layer), condition=condition, accuracy=accuracy,
                                 ci_low=low, ci_high=high, n_prompts=len(y), folds=len(splits), seed=seed))
    return pd.DataFrame(rows, columns=PROBE_COLUMNS)


# ---------------------------------------------------------------- features and stage
def probe_features(engine: MediationEngine, pairs: Sequence[EncodedPair]
                   ) -> tuple[dict[str, dict[int, np.ndarray]], np.ndarray, np.ndarray]:
    """Features per probed position and layer (prompts x d_model; layer -1 = embeddings), labels
    (1 harmful, 0 benign), groups (pair index). The request's last token sits just before the
    post-instruction template tokens, which end every prompt of a pair alike.

    Prompts are ordered pair by pair, harmful first. Only prompt tokens are run, equal-length
    prompts in one batch over their shared template prefix.
    """
    prompts = [ids for pair in pairs for ids in (pair.harmful_ids, pair.benign_ids)]
    offsets = {"instruction": [len(pair.post_positions) + 1 for pair in pairs for _ in (0, 1)],
               "last": [1] * len(prompts)}
    residuals = engine.residuals_at(prompts, {position: offsets[position] for position in PROBE_POSITIONS})
    features = {position: {layer: residuals[position][:, layer + 1] for layer in range(-1, engine.sites.n_layers)}
                for position in PROBE_POSITIONS}
    labels = np.tile(np.array([1, 0], dtype=np.int64), len(pairs))
    groups = np.repeat(np.arange(len(pairs), dtype=np.int64), 2)
    return features, labels, groups
