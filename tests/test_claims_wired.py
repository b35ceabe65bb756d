"""The route, origin and C4 statistics on tiny llamas wired by hand, where the answer is known.

Every model is a random 6-layer llama (bands: early = layer 1, mid = 2-3, late = 4-5) whose
attention and MLP outputs are zeroed except for the modules wired below, so the blocks are
identities unless told otherwise. Harmful words carry a flag in one residual dimension of their
embedding; a uniform attention head (zero queries and keys) moves a dimension from earlier
positions to later ones; one SwiGLU unit computes a nonlinear function of a dimension; the
unembedding reads the decision dimensions as the refusal tokens. Layer 0 sits outside every
band, so a mover there belongs to no band. Each mechanism runs through the real claim patches
(the discovery depth profile, then the held-out pairs) and the claims table.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import transformers
from tiny import CONFIGS, TINY_PAIRS, tiny_tokenizer

from harmmed.analyses import claim_patches
from harmmed.analyses.pairs import clean_runs
from harmmed.analyses.probe import probe_accuracy_by_layer, probe_features
from harmmed.analyses.selection import origin_bands
from harmmed.datasets.prompts import encode_pairs, split_pairs
from harmmed.patching.engine import MediationEngine
from harmmed.stats import claims
from harmmed.stats.claims import PATCH_COLUMNS
from harmmed.stats.effects import Bootstrap

N_LAYERS = 6
HARMFUL_WORDS = ("bomb", "gun", "poison", "steal", "hack", "threat")
D_FLAG, D_MOVED, D_DEC, D_OUT, D_FLAG_B, D_MOVED_B = 0, 1, 2, 3, 4, 5  # residual dimensions the wiring uses
REFUSAL_TOKENS = ("Sorry", "I")
BOOT = Bootstrap(n_boot=200, ci=0.95, seed=0)
THRESHOLDS = {"behaviour_min_te": {"harm": 1e9, "refusal": 0.5}, "C1_route_share": 0.5, "C1_origin_margin": 0.05,
              "C2_route_mlp_minus_attn": 0.0, "C2_origin_mlp_minus_attn": 0.0, "C2_origin_request_share": 0.5,
              "C3_gate_share": 0.5}


@torch.no_grad()
def blank_model() -> tuple[torch.nn.Module, object]:
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = CONFIGS["llama"]()
    config.vocab_size, config.num_hidden_layers = len(tokenizer), N_LAYERS
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    model.model.embed_tokens.weight[:, :8] = 0.0
    model.lm_head.weight[:, :8] = 0.0
    return model, tokenizer


@torch.no_grad()
def flag(model, tokenizer, words, dim: int, value: float = 4.0) -> None:
    model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids(list(words)), dim] = value


@torch.no_grad()
def mover(model, layer: int, moves: list[tuple[int, int, float]]) -> None:
    """Layer ``layer``'s attention becomes uniform and copies each (source, destination, gain) dim
    to every later position (one key/value head per move)."""
    attn = model.model.layers[layer].self_attn
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
        proj.weight.zero_()
    head_dim = attn.head_dim
    queries_per_kv = attn.num_key_value_groups
    for kv_head, (source, destination, gain) in enumerate(moves):
        attn.v_proj.weight[kv_head * head_dim, source] = 1.0
        attn.o_proj.weight[destination, kv_head * queries_per_kv * head_dim] = gain


@torch.no_grad()
def unit(model, layer: int, index: int, reads: dict[int, float], writes: int, gain: float) -> None:
    """One SwiGLU unit of layer ``layer``: silu(w.x) * (w.x) with w = ``reads``, written to ``writes``."""
    mlp = model.model.layers[layer].mlp
    for proj in (mlp.gate_proj, mlp.up_proj):
        proj.weight[index] = 0.0
        for dim, weight in reads.items():
            proj.weight[index, dim] = weight
    mlp.down_proj.weight[writes, index] = gain


@torch.no_grad()
def readout(model, tokenizer, weights: dict[int, float]) -> None:
    for dim, weight in weights.items():
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(list(REFUSAL_TOKENS)), dim] = weight


def wired(mechanism: str) -> tuple[torch.nn.Module, object]:
    model, tokenizer = blank_model()
    flag(model, tokenizer, HARMFUL_WORDS, D_FLAG)
    if mechanism == "attn_mid_mlp_relays":  # layer 2's attention writes the decision, layer 4's MLP relays it
        mover(model, 2, [(D_FLAG, D_DEC, 8.0)])
        unit(model, 4, 0, {D_DEC: 1.0}, D_OUT, 2.0)
        readout(model, tokenizer, {D_OUT: 3.0, D_DEC: 0.5})
        return model, tokenizer
    mover(model, 0, [(D_FLAG, D_MOVED, 8.0)])  # outside every band: what each prompt is about
    if mechanism == "early_relayed_late":  # computed in layer 1, relayed by layer 4's attention, with a skip path
        unit(model, 1, 0, {D_MOVED: 1.0}, D_DEC, 1.0)
        mover(model, 4, [(D_DEC, D_OUT, 8.0)])
        readout(model, tokenizer, {D_OUT: 3.0, D_DEC: 0.5})
    elif mechanism == "early_bypass":  # computed in layer 1, read straight from the residual stream
        unit(model, 1, 0, {D_MOVED: 1.0}, D_DEC, 1.0)
        readout(model, tokenizer, {D_DEC: 3.0})
    elif mechanism == "late_mlp":  # computed in layer 4
        unit(model, 4, 0, {D_MOVED: 1.0}, D_DEC, 1.0)
        readout(model, tokenizer, {D_DEC: 3.0})
    else:
        raise ValueError(mechanism)
    return model, tokenizer


def encoded(tokenizer, rows: list[tuple[str, str, str, str, str]]):
    records = [{"pair_id": f"{c}-{i:03d}", "category": c, "harmful": h, "benign": b, "harmful_target": ht,
                "benign_target": bt} for i, (c, h, b, ht, bt) in enumerate(rows)]
    kept, dropped = encode_pairs(tokenizer, records, "minimal", split_pairs(records, 0.5, 0))
    assert not dropped
    return kept


def claims_table(model, tokenizer, pairs, probe: claims.ProbeDepth | None = None) -> pd.DataFrame:
    """The claims table the workflow would compute: the profile on discovery pairs, every claim
    patch on held-out ones."""
    engine = MediationEngine(model, tokenizer.convert_tokens_to_ids(list(REFUSAL_TOKENS)))
    plan = claim_patches.ClaimPlan(
        positions="all", bands={name: tuple(layers) for name, layers in origin_bands(N_LAYERS).items()},
        top={"harm": (), "refusal": ()}, random=[], final_layer=N_LAYERS - 1)
    rows = []
    for pair in pairs:
        runs = clean_runs(engine, pair)
        step = claim_patches.selection_rows if pair.split == "discovery" else claim_patches.pair_rows
        rows += step(engine, pair, runs, plan)
    patches = pd.DataFrame(rows, columns=PATCH_COLUMNS)
    return claims.compute_claims(patches, THRESHOLDS, BOOT, 0.1, probe).set_index("statistic")


ROUTE = "late_band_necessity_share[refusal]"
ORIGIN = "late_minus_max_earlier_band_necessity_share[refusal]"
C2_ROUTE = "late_band_mlp_minus_attn_necessity_share[refusal]"
C2_ORIGIN = "origin_band_mlp_minus_attn_necessity_share[refusal]"
S, NS = "supported", "not supported"


@pytest.mark.parametrize("mechanism, intended", [
    # the decision passes through the late layers (layer 4's attention), but was made in layer 1
    ("early_relayed_late", {ROUTE: S, ORIGIN: NS, C2_ROUTE: NS, C2_ORIGIN: S}),
    # made in layer 1 and never passes through the late layers
    ("early_bypass", {ROUTE: NS, ORIGIN: NS, C2_ORIGIN: S}),
    # made in the late band, by an MLP
    ("late_mlp", {ROUTE: S, ORIGIN: S, C2_ROUTE: S, C2_ORIGIN: S}),
    # attention makes it mid-depth and a late MLP carries it: the route is MLP, the origin attention
    ("attn_mid_mlp_relays", {ROUTE: S, ORIGIN: NS, C2_ROUTE: S, C2_ORIGIN: NS}),
])
def test_wired_mechanisms_get_their_route_and_origin_verdicts(mechanism: str, intended: dict[str, str]) -> None:
    model, tokenizer = wired(mechanism)
    table = claims_table(model, tokenizer, encoded(tokenizer, TINY_PAIRS))
    assert table.loc["behaviour_present_TE[refusal]", "verdict"] == S
    got = {statistic: table.loc[statistic, "verdict"] for statistic in intended}
    assert got == intended, table[["value", "ci_low", "ci_high", "verdict"]].to_string()


def test_the_bypass_is_exactly_unneeded_and_the_relay_is_needed_in_part() -> None:
    """Holding modules that write nothing changes nothing: the bypass plant's late share is 0."""
    model, tokenizer = wired("early_bypass")
    table = claims_table(model, tokenizer, encoded(tokenizer, TINY_PAIRS))
    assert table.loc[ROUTE, "value"] == pytest.approx(0.0, abs=1e-6)
    assert table.loc[ORIGIN, "value"] == pytest.approx(-1.0, abs=1e-3)  # layer 1 carries it all
    model, tokenizer = wired("early_relayed_late")
    relayed = claims_table(model, tokenizer, encoded(tokenizer, TINY_PAIRS))
    assert 0.5 < relayed.loc[ROUTE, "value"] < 1.0  # the skip path around the late layers keeps the rest


# ---------------------------------------------------------------- C4: understanding before the decision
XOR_A, XOR_B = ("bomb", "cake"), ("poison", "soup")  # flagged word first in each
TEMPLATES = ("how to make a {} {} ?", "explain how to make a {} {} .", "please tell me how to make a {} {} .",
             "how to make a {} {} at home ?", "explain how to make a {} {} at home .",
             "tell me how to make a {} {} please .")


def xor_pairs(tokenizer):
    """Harmful when exactly one of the two slots holds its flagged word; each pair's benign prompt
    changes one slot, so no single word tells the two apart."""
    rows = []
    for template in TEMPLATES:
        for harmful, benign in ((("bomb", "soup"), ("cake", "soup")), (("cake", "poison"), ("cake", "soup")),
                                (("bomb", "soup"), ("bomb", "poison")), (("cake", "poison"), ("bomb", "poison"))):
            rows.append(("xor", template.format(*harmful), template.format(*benign), "Sure", "Sure"))
    return encoded(tokenizer, rows)


def wired_xor() -> tuple[torch.nn.Module, object]:
    """Layer 0 moves each slot's flag to every later position; two units of layer 4 compute their
    XOR (silu(k(a - b)) k(a - b) fires only when a > b, its mirror only when b > a)."""
    model, tokenizer = blank_model()
    flag(model, tokenizer, ["bomb"], D_FLAG)
    flag(model, tokenizer, ["poison"], D_FLAG_B)
    mover(model, 0, [(D_FLAG, D_MOVED, 8.0), (D_FLAG_B, D_MOVED_B, 8.0)])
    unit(model, 4, 0, {D_MOVED: 1.0, D_MOVED_B: -1.0}, D_DEC, 1.0)
    unit(model, 4, 1, {D_MOVED: -1.0, D_MOVED_B: 1.0}, D_DEC, 1.0)
    readout(model, tokenizer, {D_DEC: 3.0})
    return model, tokenizer


def probe_depth(model, tokenizer, pairs) -> tuple[claims.ProbeDepth, pd.DataFrame]:
    engine = MediationEngine(model, tokenizer.convert_tokens_to_ids(list(REFUSAL_TOKENS)))
    features, labels, groups = probe_features(engine, pairs)
    table = probe_accuracy_by_layer(features, labels, groups, folds=4, C=1.0, seed=0)
    return claims.c4_row(table, N_LAYERS, 0.9, 0.5), table


def test_xor_is_understood_only_where_it_is_decided() -> None:
    model, tokenizer = wired_xor()
    pairs = xor_pairs(tokenizer)
    depth, table = probe_depth(model, tokenizer, pairs)
    real = table[(table["condition"] == "real") & (table["position"] == "instruction")].set_index("layer")
    assert real.loc[4, "accuracy"] == 1.0 and (real.loc[:3, "accuracy"] <= 0.8).all()  # XOR: no linear read before
    assert depth.layer == 4 and depth.row["verdict"] == NS
    claims_rows = claims_table(model, tokenizer, pairs, depth)
    assert claims_rows.loc[ORIGIN, "verdict"] == S  # the decision is made in layer 4
    causal = claims_rows.loc["layers_decodable_before_origin_band[refusal]"]
    assert causal["value"] == 0 and causal["verdict"] == NS


def test_a_flag_moved_early_is_understood_before_a_late_decision() -> None:
    model, tokenizer = wired("late_mlp")
    rows = [("flag", template.format(*harmful), template.format("cake", "soup"),
             "Sure", "Sure") for template in TEMPLATES for harmful in (("bomb", "soup"), ("cake", "poison"))]
    pairs = encoded(tokenizer, [*TINY_PAIRS, *rows])  # 20 pairs: enough prompts for the interval to clear 0.9
    depth, _ = probe_depth(model, tokenizer, pairs)
    assert depth.layer == 0 and depth.row["verdict"] == S
    causal = claims_table(model, tokenizer, pairs, depth).loc["layers_decodable_before_origin_band[refusal]"]
    assert causal["value"] == 4 and causal["verdict"] == S
