"""The calibration stage end to end on a tiny model with an analytically planted late-MLP mechanism,
and the calibration table's rules on hand-made claims tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers
import yaml
from test_workflow import snakemake
from tiny import CONFIGS, TINY_CATEGORIES, tiny_tokenizer, write_tiny_pairs

HARMFUL_WORDS = ("bomb", "gun", "poison", "steal", "hack", "threat")
# Bands of 6 layers: early 1, mid 2..3, late 4..5; the routing attention sits in layer 0, outside
# every band (a mover inside a band is as necessary as the unit it feeds, see test_origin_wired),
# and the final layer is untouched.
N_LAYERS, ROUTE_LAYER, PLANT_LAYER = 6, 0, 4


@torch.no_grad()
def save_planted_late_mlp(directory: Path) -> None:
    """A random 6-layer llama wired by hand: harmful-span tokens carry residual dimension 0; layer 0's
    attention (uniform: zero queries and keys) copies it to every later position as dimension 1;
    one unit of layer 4's MLP fires on dimension 1 and writes dimension 2, which the unembedding
    reads as the refusal tokens "Sorry" and "I". No other module writes dimensions 0 and 1, so the
    refusal is computed by the layer-4 MLP and nowhere else; the final layer is left as it was."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = CONFIGS["llama"]()
    config.vocab_size, config.num_hidden_layers = len(tokenizer), N_LAYERS
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    embed = model.model.embed_tokens.weight
    embed[:, :2] = 0.0
    embed[tokenizer.convert_tokens_to_ids(list(HARMFUL_WORDS)), 0] = 1.0
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight[:2] = 0.0
        layer.mlp.down_proj.weight[:2] = 0.0
    route = model.model.layers[ROUTE_LAYER].self_attn
    for proj in (route.q_proj, route.k_proj, route.v_proj, route.o_proj):
        proj.weight.zero_()
    route.v_proj.weight[0, 0] = 1.0  # key/value head 0 reads dimension 0 ...
    route.o_proj.weight[1, 0] = 2.0  # ... and query head 0 writes it to dimension 1
    mlp = model.model.layers[PLANT_LAYER].mlp
    mlp.gate_proj.weight[0] = 0.0
    mlp.up_proj.weight[0] = 0.0
    mlp.gate_proj.weight[0, 1] = mlp.up_proj.weight[0, 1] = 1.0
    mlp.down_proj.weight[:, 0] = 0.0
    mlp.down_proj.weight[2, 0] = 1.0
    head = model.lm_head.weight
    head[:, 2] = 0.0
    head[tokenizer.convert_tokens_to_ids(["Sorry", "I"]), 2] = 1.5
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("calibration")
    save_planted_late_mlp(workdir / "plant")
    write_tiny_pairs(workdir / "pairs.csv")
    config = {
        "models": [{"name": "plant-late-mlp", "source": "local", "path": str(workdir / "plant"),
                    "expected_verdicts": {"C1-route": "supported", "C1-origin": "supported", "C2-route": "supported",
                                          "C2-origin": "supported", "C3": "not supported"}}],
        "prompts": {"pairs_file": str(workdir / "pairs.csv"), "categories": TINY_CATEGORIES},
        "metrics": {"refusal_phrases": ["Sorry", "I cannot"]},
        "mediation": {"max_pairs": 4, "windows": [1, 3]},
        "neuron": {"block_size": 16, "random_draws": 4},
        "claims": {"random_draws": 10},
        "probe": {"folds": 2},
        "effects": {"bootstrap_samples": 200},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = snakemake(workdir, path, "results/calibration.csv", "figures/calibration.png",
                     "figures/plant-late-mlp/claims.md")
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir


def test_planted_late_mlp_is_found_and_calibration_marks_it(calibrated_run):
    workdir = calibrated_run
    claims = pd.read_csv(workdir / "results" / "plant-late-mlp" / "claims.csv").set_index("statistic")
    assert claims.loc["behaviour_present_TE[refusal]", "verdict"] == "supported"
    assert claims.loc["behaviour_present_TE[refusal]", "ci_low"] > 1.0
    route = claims.loc["late_band_necessity_share[refusal]"]
    origin = claims.loc["late_minus_max_earlier_band_necessity_share[refusal]"]
    c2 = claims.loc["late_band_mlp_minus_attn_necessity_share[refusal]"]
    c2_origin = claims.loc["origin_band_mlp_minus_attn_necessity_share[refusal]"]
    gate = claims.loc["final_layer_topk_gate_sufficiency[refusal]"]
    necessity = claims.loc["final_layer_topk_gate_necessity[refusal]"]
    assert route["verdict"] == "supported" and route["value"] > 0.8
    assert origin["verdict"] == "supported" and origin["value"] > 0.5
    assert c2["verdict"] == "supported" and c2["value"] > 0.5
    assert c2_origin["verdict"] == "supported" and c2_origin["value"] > 0.5
    assert gate["verdict"] == "not supported" and abs(gate["value"]) < 0.1
    assert necessity["verdict"] == "not supported" and abs(necessity["value"]) < 0.1
    patches = pd.read_csv(workdir / "results" / "plant-late-mlp" / "claim_patches.csv", keep_default_na=False)
    assert set(patches[patches["role"] == "band_late_mlp"]["layers"]) == {"4:6"}  # the last third of 6 layers
    inputs = [json.loads(line) for line in (workdir / "results" / "plant-late-mlp" / "inputs.jsonl").open()]
    held_out = {p["pair_id"] for p in inputs if p["split"] == "held_out"}
    selecting = patches["role"].str.startswith("select_")
    assert set(patches[~selecting]["pair_id"]) == held_out  # judged on pairs that chose nothing
    assert not set(patches[selecting]["pair_id"]) & held_out  # the origin band is chosen on discovery

    calibration = pd.read_csv(workdir / "results" / "calibration.csv", keep_default_na=False)
    assert list(calibration.columns) == ["statistic", "model", "expected", "verdict", "value", "ci_low",
                                         "ci_high", "correct", "ground_truth"]
    judged = calibration[calibration["expected"] != ""].set_index("statistic")
    assert judged.loc["late_minus_max_earlier_band_necessity_share[refusal]", "correct"] == "true"
    assert judged.loc["final_layer_topk_gate_sufficiency[refusal]", "expected"] == "not supported"
    assert (judged["correct"] == "true").all()
    assert (calibration[calibration["statistic"].str.endswith("[harm]")]["expected"] == "").all()
    md = (workdir / "figures" / "plant-late-mlp" / "claims.md").read_text()
    assert (judged["ground_truth"] == "established").all()
    assert "| calibrated on one side ('supported' only; right on 1 plant) |" in md and "| no ground truth |" in md
    assert "| calibrated on one side ('not supported' only; right on 1 plant) |" in md
    assert (workdir / "figures" / "calibration.png").stat().st_size > 5000


@pytest.mark.parametrize("lengths", [(13, 12), (12, 15)])
def test_unpaired_claim_patches_use_the_configured_positions(lengths):
    """Issue 9, defect 6: unpaired prompts forbid "all", so the claim patches take the module
    stage's positions ("post") in each direction's own base run, and the profile runs."""
    from tiny import tiny_model

    from harmmed.analyses.claim_patches import ClaimSettings, build_plan, pair_rows
    from harmmed.analyses.pairs import clean_runs
    from harmmed.datasets.prompts import EncodedPair
    from harmmed.patching.engine import MediationEngine
    from harmmed.stats.claims import PATCH_COLUMNS

    torch.manual_seed(0)
    engine = MediationEngine(tiny_model("llama"), [3, 5])
    harmful_len, benign_len = lengths
    pair = EncodedPair("p-000", "held_out", "c", list(range(10, 7 + harmful_len)) + [2, 3, 4],
                       list(range(50, 47 + benign_len)) + [2, 3, 4], [40, 41, 42],
                       list(range(harmful_len - 3, harmful_len)))
    cfg = {"claims": {"top_fraction": 0.05, "random_draws": 3, "seed": 0},
           "mediation": {"module_positions": ["post"]}}
    ranking = pd.DataFrame([dict(metric=m, site="neuron", layer=3, unit=u, rank=u + 1)
                            for m in ("harm", "refusal") for u in range(48)])
    plan = build_plan(ClaimSettings.from_config(cfg), {"n_layers": 4, "d_mlp": 48}, ranking)
    assert plan.positions == "post" and plan.top["refusal"] == (0, 1, 2)
    rows = pd.DataFrame(pair_rows(engine, pair, clean_runs(engine, pair), plan), columns=PATCH_COLUMNS)
    profile = {f"band_{band}_{types}" for band in ("early", "mid", "late") for types in ("both", "attn", "mlp")}
    assert set(rows["positions"]) == {"post"} and profile <= set(rows["role"])
    assert set(rows[rows["role"].isin(profile)]["kind"]) == {"NEC"}
    assert set(rows[rows["kind"] == "NIE"]["role"]) == {"c3_topk", "c3_layer", "c3_random"}
    # the final MLP's units at the post positions of each base run include its last prompt token,
    # the only one whose final-layer units reach the refusal score: the same as patching that token
    from harmmed.patching.patches import Patch

    harmful, benign = clean_runs(engine, pair)
    layer = rows[(rows["role"] == "c3_layer") & (rows["metric"] == "refusal")].set_index("kind")
    last_only = {kind: engine.patch(base, source, [(Patch("neuron", 3, (len(ids) - 1,)),)])[0][1]
                 for kind, base, source, ids in (("NIE", benign, harmful, pair.benign_ids),
                                                 ("NEC", harmful, benign, pair.harmful_ids))}
    assert layer.loc["NIE", "y_patched"] == pytest.approx(last_only["NIE"], abs=1e-5)
    assert layer.loc["NEC", "y_patched"] == pytest.approx(last_only["NEC"], abs=1e-5)
    assert abs(layer.loc["NIE", "effect"]) > 1e-4 and abs(layer.loc["NEC", "effect"]) > 1e-4
    # the profile holds a band's outputs at their benign values in the harmful run: the mid band
    # of 4 layers is layer 2, the late band layer 3; "both" holds attention and MLP outputs
    # together; each row equals its intervention run alone
    nec = rows[(rows["kind"] == "NEC") & (rows["metric"] == "refusal")].set_index("role")
    post = tuple(range(len(pair.harmful_ids) - 3, len(pair.harmful_ids)))
    for site in ("mlp", "attn"):  # C2-route's two rows
        alone = engine.patch(harmful, benign, [(Patch(site, 3, post),)])[0][1]
        assert nec.loc[f"band_late_{site}", "layers"] == "3:4"
        assert nec.loc[f"band_late_{site}", "y_patched"] == pytest.approx(alone, abs=1e-6)
    both = engine.patch(harmful, benign, [(Patch("attn", 2, post), Patch("mlp", 2, post))])[0][1]
    assert nec.loc["band_mid_both", "layers"] == "2:3"
    assert nec.loc["band_mid_both", "y_patched"] == pytest.approx(both, abs=1e-6)
    assert nec.loc["band_mid_both", "effect"] == pytest.approx(harmful.y["refusal"] - both, abs=1e-6)


def test_calibration_table_and_marks():
    from harmmed.stats.calibration import calibrated_marks, calibration_table

    def table(*verdicts):
        names = ["behaviour_present_TE[refusal]", "late_band_necessity_share[refusal]",
                 "late_band_necessity_share[harm]", "probe_rel_depth_acc_ge_0.9"]
        return pd.DataFrame({"claim": ["B", "C1-route", "C1-route", "C4"], "statistic": names, "verdict": list(verdicts),
                             "value": 0.5, "ci_low": 0.1, "ci_high": 0.9})

    tables = {"base": table("not supported", "not applicable (no behaviour)", "supported", "supported"),
              "late": table("supported", "supported", "inconclusive", "supported"),
              "early": table("supported", "inconclusive", "supported", "supported")}
    expected = {"late": {"C1-route": "supported"}, "early": {"C1-route": "not supported"}}
    cal = calibration_table(tables, expected, "refusal")
    assert len(cal) == 12 and cal["model"].tolist()[:4] == ["base"] * 4
    assert (cal[cal["model"] == "base"]["expected"] == "").all()
    got = cal.set_index(["model", "statistic"])["correct"]
    assert got[("late", "late_band_necessity_share[refusal]")] == "true"
    assert got[("early", "late_band_necessity_share[refusal]")] == "false"  # inconclusive is wrong
    assert got[("early", "late_band_necessity_share[harm]")] == ""  # not the calibration metric
    marks = calibrated_marks(cal)
    assert marks["late_band_necessity_share[refusal]"] == "not calibrated (wrong on early)"
    assert marks["behaviour_present_TE[refusal]"] == "calibrated on one side ('supported' only; right on 2 plants)"
    assert marks["probe_rel_depth_acc_ge_0.9"] == "no ground truth"
    both = calibration_table({**tables, "early": table("supported", "not supported", "supported", "supported")},
                             expected, "refusal")
    assert calibrated_marks(both)["late_band_necessity_share[refusal]"] == "calibrated on both sides (right on 2 plants)"


def _claims(*verdicts: str) -> pd.DataFrame:
    return pd.DataFrame({"claim": ["B", "C1-route"], "verdict": list(verdicts), "value": 0.5, "ci_low": 0.1, "ci_high": 0.9,
                         "statistic": ["behaviour_present_TE[refusal]", "late_band_necessity_share[refusal]"]})


def test_a_plant_whose_own_recovery_fails_gives_no_ground_truth():
    from harmmed.stats.calibration import calibrated_marks, calibration_table, unmet_ground_truth

    def recovery(model: str, type_pass: bool, necessity_pass: bool) -> pd.DataFrame:
        rows = [("behaviour_check", "1", True), ("type_contrast_mlp", ">= 0.8", type_pass),
                ("type_contrast_attn", "<= 0.4", False),  # the method's test, not the ground truth's
                ("necessity_planted", ">= 0.5", necessity_pass), ("localisation_best_window_centre", "in", False)]
        return pd.DataFrame([{"model": model, "plant": model, "statistic": s, "target": t, "pass": str(p)}
                             for s, t, p in rows])

    assert unmet_ground_truth(recovery("late", True, True), "late") == []
    assert unmet_ground_truth(recovery("early", False, True), "early") == ["type_contrast_mlp"]
    assert unmet_ground_truth(recovery("early", False, False), "early") == ["type_contrast_mlp", "necessity_planted"]
    with pytest.raises(ValueError, match="recovery table of other"):
        unmet_ground_truth(recovery("early", True, True), "other")

    tables = {"late": _claims("supported", "supported"), "early": _claims("supported", "supported"),
              "late2": _claims("supported", "supported")}
    expected = {"late": {"C1-route": "supported"}, "early": {"C1-route": "not supported"}, "late2": {"C1-route": "supported"}}
    cal = calibration_table(tables, expected, "refusal", {"early": "own recovery missed type_contrast_mlp"})
    early = cal[cal["model"] == "early"]
    assert (early["correct"] == "").all() and (early["expected"] != "").all()
    assert set(early["ground_truth"]) == {"not established: own recovery missed type_contrast_mlp"}
    marks = calibrated_marks(cal)
    assert marks["late_band_necessity_share[refusal]"] == "calibrated on one side ('supported' only; right on 2 plants)"
    judged = calibrated_marks(calibration_table(tables, expected, "refusal"))
    assert judged["late_band_necessity_share[refusal]"] == "not calibrated (wrong on early)"
