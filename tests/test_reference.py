"""The reference patcher (harmmed.review.reference) agrees with the engine on tiny models of every family,
for every site, including both unit sites, frozen (severed) mediators and given values."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import FAMILIES, VOCAB, tiny_model

from harmmed.constants import METRICS
from harmmed.patching.engine import MediationEngine
from harmmed.patching.patches import FROZEN_BASE, Given, Patch
from harmmed.review.reference import Edit, ReferencePatcher

REFUSAL = [3, 5, 8]
HARMFUL = [11, 12, 13, 40, 41, 15, 16, 17, 18]
BENIGN = [11, 12, 13, 50, 51, 15, 16, 17, 18]  # token-aligned: differs at positions 3 and 4
TARGET = [20, 21, 22, 23]
LONGER = [30, 31, 11, 12, 13, 60, 15, 16, 17, 18, 19]  # an unpaired base, 2 tokens longer
LAST = len(HARMFUL) - 1
ALL = tuple(range(len(HARMFUL)))


def interventions(n_layers: int, d_mlp: int, d_model: int) -> list[tuple[Patch, ...]]:
    final = n_layers - 1
    fed = tuple(range(len(HARMFUL) + len(TARGET) - 1))
    return [
        (Patch("residual", -1, (3,)),),
        (Patch("residual", 0, ALL),),
        (Patch("residual", final, (LAST,)),),
        (Patch("residual", 1, (6, LAST)),),
        (Patch("attn", 1, ALL),),
        (Patch("mlp", 2, (4, 7)),),
        tuple(Patch("mlp", k, ALL) for k in range(0, 3)),  # a window
        (Patch("neuron", final, ALL, (5,)),),
        (Patch("neuron", 1, ALL, tuple(range(8, 24))),),
        (Patch("neuron", final, ALL, None),),
        (Patch("attn_dims", final, ALL, (2,)),),
        (Patch("attn_dims", 0, (4, LAST), tuple(range(0, d_model, 3))),),
        (Patch("residual", 0, ALL), *(Patch("mlp", k, fed, value_from=FROZEN_BASE) for k in range(1, n_layers))),  # severed
        (Patch("residual", 1, ALL), *(Patch("attn", k, fed, value_from=FROZEN_BASE) for k in range(2, n_layers))),
    ]


def as_edits(intervention: tuple[Patch, ...]) -> list[Edit]:
    return [Edit(p.site, p.layer, p.positions, p.units, frozen=p.value_from == FROZEN_BASE) for p in intervention]


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_equals_engine_in_both_directions(family):
    torch.set_num_threads(1)
    model = tiny_model(family)
    engine = MediationEngine(model, REFUSAL)
    reference = ReferencePatcher(model, REFUSAL)
    sites = engine.sites
    harmful, benign = engine.run(HARMFUL, TARGET), engine.run(BENIGN, TARGET)
    for ids, run in ((HARMFUL, harmful), (BENIGN, benign)):
        clean, _ = reference.clean(ids, TARGET, [])
        assert [clean[m] for m in METRICS] == pytest.approx([run.y[m] for m in METRICS], abs=1e-5)
    ivs = interventions(sites.n_layers, sites.d_mlp, sites.d_model)
    for base, source, base_ids, source_ids in ((benign, harmful, BENIGN, HARMFUL), (harmful, benign, HARMFUL, BENIGN)):
        ours = engine.patch(base, source, ivs)
        theirs = np.array([[reference.patched((base_ids, TARGET), source_ids, as_edits(iv))[m] for m in METRICS]
                           for iv in ivs])
        np.testing.assert_allclose(theirs, ours, atol=2e-5, rtol=0)
        assert np.abs(ours - np.array([base.y[m] for m in METRICS])).max() > 1e-3  # the patches do something


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_reference_right_aligns_an_unpaired_source_and_takes_given_values(family):
    torch.set_num_threads(1)
    model = tiny_model(family)
    engine = MediationEngine(model, REFUSAL)
    reference = ReferencePatcher(model, REFUSAL)
    final = engine.sites.n_layers - 1
    base, source = engine.run(LONGER, TARGET), engine.run(HARMFUL, TARGET)
    tail = tuple(range(len(LONGER) - 4, len(LONGER)))  # positions present in both, right-aligned
    ivs = [(Patch("residual", 1, tail),), (Patch("neuron", final, tail, (1, 7)),), (Patch("attn_dims", 2, tail),)]
    ours = engine.patch(base, source, ivs)
    theirs = [[reference.patched((LONGER, TARGET), HARMFUL, as_edits(iv))[m] for m in METRICS] for iv in ivs]
    np.testing.assert_allclose(theirs, ours, atol=2e-5, rtol=0)

    units, values = [2, 9, 30], np.array([0.5, -1.25, 2.0])
    last = len(LONGER) - 1
    given = Given(tuple(float(v) for v in values))
    ours = engine.patch(base, source, [(Patch("neuron", final, (last,), tuple(units), given),)])[0]
    theirs = reference.patched((LONGER, TARGET), None, [Edit("neuron", final, (last,), tuple(units),
                                                              values=tuple(values))])
    np.testing.assert_allclose([theirs[m] for m in METRICS], ours, atol=2e-5, rtol=0)
    assert abs(theirs["harm"] - base.y["harm"]) > 1e-4


def test_reference_is_independent_of_the_engine():
    source = Path(__file__).resolve().parents[1] / "src" / "harmmed" / "review" / "reference.py"
    tree = ast.parse(source.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not any(part in (name or "") for name in imported for part in ("engine", "hooks", "patching"))
    assert len(source.read_text().splitlines()) < 200  # readable in five minutes
    assert VOCAB > max(HARMFUL + BENIGN + TARGET + LONGER)
