"""Recovery statistics find an analytically wired mechanism, and fail where it is absent."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import TINY_PAIRS, tiny_model, tiny_tokenizer

from harmmed.analyses import neuron
from harmmed.analyses.pairs import clean_runs
from harmmed.stats.ranking import rank_units
from harmmed.analyses.recovery import (
    Plant,
    Targets,
    configured_plants,
    elsewhere_band,
    pair_effects,
    ranked_units,
    recovery_rows,
)
from harmmed.analyses.sweep import sweep
from harmmed.constants import NEURON_COLUMNS
from harmmed.datasets.prompts import encode_pairs, split_pairs
from harmmed.models.components import ComponentSpec, parse_trainable, seeded_units
from harmmed.patching.engine import MediationEngine
from harmmed.stats.effects import Bootstrap

HARMFUL_WORDS = ("bomb", "gun", "poison", "steal", "hack", "threat")
GATE_UNIT = 7
D_FLAG, D_ROUTED, D_REFUSE = 0, 1, 2  # residual dimensions the wiring uses
BOOT = Bootstrap(n_boot=200, ci=0.95, seed=0)


@torch.no_grad()
def wired_gate_model():
    """A tiny llama whose refusal is decided by one final-layer unit, set by hand (no training).

    Harmful words carry a flag dimension in their embedding; blocks 0-2 are identities; the final
    block's attention is uniform (zero queries and keys) and copies the flag to a routed dimension
    of the last position; unit GATE_UNIT of the final MLP reads the routed dimension (SwiGLU: it
    is ~0 without the flag) and writes along the refusal token's unembedding row, which no other
    unit or dimension touches. So the harmful-benign difference in refusal flows through that unit.
    """
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    refusal = tokenizer.convert_tokens_to_ids("Sorry")
    layers = model.model.layers
    for block in layers[:3]:
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    embed = model.model.embed_tokens.weight
    embed[:, [D_FLAG, D_ROUTED, D_REFUSE]] = 0.0
    for word in HARMFUL_WORDS:
        embed[tokenizer.convert_tokens_to_ids(word), D_FLAG] = 4.0
    final = layers[3]
    attn, mlp = final.self_attn, final.mlp
    attn.q_proj.weight.zero_()
    attn.k_proj.weight.zero_()
    attn.v_proj.weight.zero_()
    attn.o_proj.weight.zero_()
    attn.v_proj.weight[0, D_FLAG] = 1.0
    attn.o_proj.weight[D_ROUTED, 0] = 8.0
    mlp.gate_proj.weight[GATE_UNIT].zero_()
    mlp.up_proj.weight[GATE_UNIT].zero_()
    mlp.gate_proj.weight[GATE_UNIT, D_ROUTED] = 6.0
    mlp.up_proj.weight[GATE_UNIT, D_ROUTED] = 6.0
    mlp.down_proj.weight[D_REFUSE] = 0.0
    mlp.down_proj.weight[:, GATE_UNIT] = 0.0
    mlp.down_proj.weight[D_REFUSE, GATE_UNIT] = 3.0
    head = model.lm_head.weight
    head[:, [D_FLAG, D_ROUTED, D_REFUSE]] = 0.0
    head[refusal, D_REFUSE] = 10.0
    return model, tokenizer, refusal


def _pairs(tokenizer):
    rows = [{"pair_id": f"{c}-{i:03d}", "category": c, "harmful": h, "benign": b, "harmful_target": ht,
             "benign_target": bt} for i, (c, h, b, ht, bt) in enumerate(TINY_PAIRS)]
    kept, dropped = encode_pairs(tokenizer, rows, "minimal", split_pairs(rows, 0.5, 0))
    assert not dropped
    return kept


def test_the_wired_unit_ranks_first_and_the_gate_is_recovered() -> None:
    model, tokenizer, refusal = wired_gate_model()
    engine = MediationEngine(model, [refusal])
    pairs = _pairs(tokenizer)
    plan = neuron.NeuronPlan([3], block_size=16, block_pairs=0, attn_dims=False)
    rows = sweep(engine, pairs, lambda step: neuron.pair_neuron_rows(
        engine, step.pair, step.runs, plan, every_layer_blocks=False), "neuron")
    ranking = rank_units(pd.DataFrame(rows, columns=NEURON_COLUMNS), "neuron", 3)
    order = ranked_units(ranking, "refusal", 3)
    assert order[0] == GATE_UNIT

    plant = Plant("gate", ComponentSpec("neuron", (3, 3), 1), (GATE_UNIT,))
    effects = pd.DataFrame([pair_effects(engine, pair, clean_runs(engine, pair), [plant], {"gate": order}) for pair in pairs])
    assert (effects["te"] > 1.0).all()  # the wiring gives every pair a clear refusal effect
    table = pd.DataFrame(recovery_rows("gate", effects, [plant], "gate", {"gate": order}, 4, Targets(), 0.1, BOOT))
    judged = table[table["target"] != ""]
    assert set(judged["statistic"]) == {"gate_recall_at_1", "gate_planted_joint_nie", "gate_planted_necessity"}
    assert judged["pass"].tolist() == [True, True, True]
    joint = table.set_index("statistic").loc["gate_planted_joint_nie"]
    assert 0.9 <= joint["value"] <= 1.1 and joint["ci_low"] <= joint["value"] <= joint["ci_high"]
    assert table.set_index("statistic").loc["gate_missed_joint_nie", "value"] == 0.0  # nothing was missed
    rows = table.set_index("statistic")
    assert rows.loc["gate_effect_weighted_recall_at_1", "value"] == 1.0
    assert rows.loc["gate_precision_at_80pct_of_planted_nie", "value"] == 1.0  # the top unit alone carries it

    # Two planted units, the wired one and one that carries nothing (ranked last). A ranking that
    # finds only the wired one misses nothing that matters; one that finds only the idle one
    # misses the whole effect. Recall is 1/2 both times: only the missed units' NIE tells them apart.
    pair_plant = Plant("gate", ComponentSpec("neuron", (3, 3), 2), tuple(sorted((GATE_UNIT, order[-1]))))
    for ranking, missed in ((order, 0.0), (order[::-1], 1.0)):
        effects = pd.DataFrame([pair_effects(engine, pair, clean_runs(engine, pair), [pair_plant], {"gate": ranking})
                                for pair in pairs])
        table = pd.DataFrame(recovery_rows("gate", effects, [pair_plant], "gate", {"gate": ranking}, 4, Targets(),
                                           0.1, BOOT)).set_index("statistic")
        assert table.loc["gate_recall_at_2", "value"] == 0.5
        assert abs(table.loc["gate_missed_joint_nie", "value"] - missed) < 0.1
        # weighted by effect the two rankings differ: the wired unit is all of the gate
        assert abs(table.loc["gate_effect_weighted_recall_at_2", "value"] - (1.0 - missed)) < 0.1
        # the top two hold half the planted units but carry the gate: precision 1/2; ranked the
        # wrong way round, the smallest set reaching 80% is the whole ranking of 48 units
        expected = 0.5 if missed == 0.0 else 2 / 48
        assert table.loc["gate_precision_at_80pct_of_planted_nie", "value"] == pytest.approx(expected)

    # A wrong ground truth (another unit) is not recovered: the statistics can fail.
    decoy = Plant("gate", ComponentSpec("neuron", (3, 3), 1), ((GATE_UNIT + 1) % 48,))
    effects = pd.DataFrame([pair_effects(engine, pair, clean_runs(engine, pair), [decoy], {"gate": order}) for pair in pairs])
    table = pd.DataFrame(recovery_rows("gate", effects, [decoy], "gate", {"gate": order}, 4, Targets(), 0.1, BOOT))
    assert table[table["target"] != ""]["pass"].tolist() == [False, False, False]


def _band_effects(planted_mlp: float, planted_attn: float, best_window: int, n: int = 6) -> pd.DataFrame:
    """Synthetic per-pair effects of a band plant at layers 4-5 of an 8-layer model."""
    rng = np.random.default_rng(0)
    te = 2.0 + rng.random(n)
    frame = {"te": te,
             "nie:p/type_mlp": planted_mlp * te, "nie:p/type_attn": planted_attn * te,
             "removed:p/planted": 0.9 * te, "removed:p/other_type": 0.2 * te, "removed:p/elsewhere": 0.1 * te}
    for start in range(7):
        frame[f"nie:p/window/mlp/{start}"] = (1.0 if start == best_window else 0.2) * te
    return pd.DataFrame(frame)


@pytest.mark.parametrize("mlp, attn, best, expected", [
    (0.95, 0.3, 4, [True, True, True, True, True, True]),
    (0.95, 0.6, 4, [True, False, True, True, True, True]),
    (0.95, 0.3, 1, [True, True, True, True, True, False]),
])
def test_band_statistics_judge_type_necessity_and_localisation(mlp, attn, best, expected) -> None:
    plant = Plant("p", ComponentSpec("mlp", (4, 5)))
    rows = pd.DataFrame(recovery_rows("p", _band_effects(mlp, attn, best), [plant], "p", {}, 8, Targets(), 0.1, BOOT))
    assert rows["statistic"].tolist() == ["type_contrast_mlp", "type_contrast_attn", "necessity_planted",
                                          "necessity_other_type", "necessity_elsewhere",
                                          "localisation_best_window_centre"]
    assert rows["pass"].tolist() == expected
    null = pd.DataFrame(recovery_rows("base", _band_effects(mlp, attn, best), [plant], None, {}, 8, Targets(), 0.1, BOOT))
    assert (null["target"] == "").all() and (null["pass"] == "").all()  # no plant: no verdicts
    assert np.allclose(null["value"], rows["value"], equal_nan=True)


@pytest.mark.parametrize("bypassed, passed", [(0.1, True), (0.6, False)])
def test_a_bypass_plant_is_judged_on_the_band_it_was_trained_around(bypassed: float, passed: bool) -> None:
    plant = Plant("p", ComponentSpec("mlp", (1, 2), bypass=(6, 7)))
    effects = _band_effects(0.95, 0.3, 1).assign(**{"removed:p/bypassed": lambda f: bypassed * f["te"]})
    rows = pd.DataFrame(recovery_rows("p", effects, [plant], "p", {}, 8, Targets(), 0.1, BOOT)).set_index("statistic")
    assert rows.loc["necessity_bypassed", "target"] == "<= 0.3"
    assert rows.loc["necessity_bypassed", "value"] == pytest.approx(bypassed)
    assert bool(rows.loc["necessity_bypassed", "pass"]) is passed
    from harmmed.stats.calibration import unmet_ground_truth

    table = rows.reset_index().assign(pass_=lambda f: f["pass"].astype(str)).drop(columns="pass")
    table = table.rename(columns={"pass_": "pass"})
    assert ("necessity_bypassed" in unmet_ground_truth(table, "p")) is not passed  # part of the ground truth


def test_elsewhere_band_never_overlaps() -> None:
    assert elsewhere_band(range(22, 26), 30) == (13, 14, 15, 16)
    assert elsewhere_band(range(13, 17), 30) == (1, 2, 3, 4)
    assert elsewhere_band(range(0, 2), 4) == (2, 3)
    with pytest.raises(ValueError, match="no band of 3 layers"):
        elsewhere_band(range(1, 4), 4)


def test_configured_plants_follow_the_config() -> None:
    models = [{"name": "base", "source": "local"},
              {"name": "aligned", "source": "finetune", "trainable": "all", "seed": 0},
              {"name": "late", "source": "finetune", "trainable": {"site": "mlp", "layers": [2, 3]}, "seed": 0},
              {"name": "gate", "source": "finetune", "trainable": {"site": "neuron", "layer": 3, "units": 4}, "seed": 2}]
    plants = configured_plants(models, 48)
    assert [p.name for p in plants] == ["late", "gate"]
    assert plants[0].band == (2, 3) and plants[1].units == tuple(seeded_units(48, 4, 2))
    assert parse_trainable(models[2]["trainable"]).planted() == {"site": "mlp", "layers": [2, 3]}


def test_recovery_figure_reads_numeric_targets_and_draws_only_plants() -> None:
    """Dashes are drawn at numeric targets only, and a model without a plant gets no panel."""
    from harmmed.figures.recovery import recovery_panels, target_threshold

    assert target_threshold(">= 0.8") == 0.8
    assert target_threshold("<= 0.4") == 0.4
    assert target_threshold(">= 0.75") == 0.75
    assert target_threshold("< necessity_planted") is None
    assert target_threshold("window centre in [22, 25]") is None
    assert target_threshold("") is None
    frame = pd.DataFrame({"plant": ["late", "gate", "", "late"], "model": ["base", "base", "aligned", "late"]})
    assert recovery_panels(frame) == ["late", "gate"]


def test_recovery_figure_renders_clipped_values_and_notes(tmp_path) -> None:
    """A plant's table plus a null model's, with values far off the ratio axis (as a model with no
    refusal effect gives), a missing CI and the non-ratio rows: PNG and PDF come out, stable."""
    from harmmed.constants import RECOVERY_COLUMNS
    from harmmed.figures.recovery import plot_recovery

    def table(model: str, rows: list[tuple]) -> pd.DataFrame:
        frame = pd.DataFrame(rows, columns=["statistic", "value", "ci_low", "ci_high", "target", "pass"])
        frame.insert(0, "plant", "late")
        frame.insert(0, "model", model)
        frame["n_pairs"] = 4
        return frame[RECOVERY_COLUMNS]

    nan = float("nan")
    own = table("late", [("type_contrast_mlp", 2.5, 2.0, 3.0, ">= 0.8", "True"),
                         ("necessity_planted", -0.9, nan, nan, ">= 0.5", "False"),
                         ("localisation_best_window_centre", 23.5, nan, nan, "window centre in [22, 25]", "True"),
                         ("behaviour_check", 1.0, nan, nan, "1", "True")])
    null = table("base", [("type_contrast_mlp", -4.0, nan, nan, "", ""), ("necessity_planted", 0.3, nan, nan, "", "")])
    written = plot_recovery([null, own], tmp_path / "recovery")
    assert [p.suffix for p in written] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in written)
    first = written[0].read_bytes()
    plot_recovery([null, own], tmp_path / "recovery")
    assert written[0].read_bytes() == first
