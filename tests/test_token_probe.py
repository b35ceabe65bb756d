"""Token roles and embedding NIE, the harmfulness probe, and the C4 claim row."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import TINY_PAIRS, save_tiny_model, tiny_model, tiny_tokenizer, write_tiny_pairs

from harmmed.analyses.probe import PROBE_COLUMNS, grouped_splits, probe_accuracy_by_layer, shuffle_within_groups
from harmmed.analyses.token_roles import position_roles, token_rows
from harmmed.config import validate_config
from harmmed.constants import METRICS, ROW_COLUMNS
from harmmed.constants import TOKEN_ROLES as ROLES
from harmmed.datasets.prompts import EncodedPair, encode_prompt, read_inputs
from harmmed.figures.probe import plot_probe
from harmmed.figures.tokens import plot_token_heatmap
from harmmed.patching.engine import MediationEngine
from harmmed.stages import mediate_token, prepare_prompts, run_probe
from harmmed.stats.claims import c4_row


# ---------------------------------------------------------------- probe on planted features
def planted_features(n_pairs: int = 40, n_layers: int = 6, onset: int = 3, dim: int = 16,
                     seed: int = 0) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """Noise features; from layer `onset` on, harmful prompts are shifted along one direction."""
    rng = np.random.default_rng(seed)
    labels = np.tile([1, 0], n_pairs)
    groups = np.repeat(np.arange(n_pairs), 2)
    direction = np.zeros(dim)
    direction[0] = 4.0
    features = {}
    for layer in range(-1, n_layers):
        x = rng.normal(size=(2 * n_pairs, dim))
        if layer >= onset:
            x += np.outer(labels, direction)
        features[layer] = x
    return features, labels, groups


@pytest.fixture(scope="module")
def planted() -> pd.DataFrame:
    features, labels, groups = planted_features()
    return probe_accuracy_by_layer({"instruction": features}, labels, groups, folds=5, C=1.0, seed=0)


def test_probe_finds_the_planted_onset(planted: pd.DataFrame) -> None:
    assert list(planted.columns) == PROBE_COLUMNS
    real = planted[planted["condition"] == "real"].set_index("layer")
    assert (real.loc[3:, "accuracy"] > 0.9).all()
    assert (real.loc[:2, "accuracy"] < 0.75).all()
    shuffled = planted[planted["condition"] == "shuffled"]
    assert (shuffled["accuracy"] < 0.7).all()
    assert (planted["ci_low"] <= planted["accuracy"]).all()
    assert (planted["accuracy"] <= planted["ci_high"]).all()
    assert set(planted["n_prompts"]) == {80} and set(planted["folds"]) == {5}


def test_probe_is_deterministic(planted: pd.DataFrame) -> None:
    features, labels, groups = planted_features()
    again = probe_accuracy_by_layer({"instruction": features}, labels, groups, folds=5, C=1.0, seed=0)
    pd.testing.assert_frame_equal(planted, again)


def test_folds_keep_each_pair_together() -> None:
    labels = np.tile([1, 0], 23)
    groups = np.repeat(np.arange(23), 2)
    splits = grouped_splits(labels, groups, folds=5, seed=3)
    assert len(splits) == 5
    tested = np.concatenate([test for _, test in splits])
    assert sorted(tested) == list(range(46))
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])


def test_shuffled_labels_stay_balanced_within_pairs() -> None:
    labels = np.tile([1, 0], 50)
    groups = np.repeat(np.arange(50), 2)
    shuffled = shuffle_within_groups(labels, groups, seed=0)
    assert (shuffled.reshape(50, 2).sum(axis=1) == 1).all()
    assert 10 < (shuffled != labels).sum() // 2 < 40  # some pairs swapped, some not


# ---------------------------------------------------------------- C4 rows
def probe_table(accuracies: list[float], n: int = 200) -> pd.DataFrame:
    rows = [dict(position="instruction", layer=layer, condition="real", accuracy=a, ci_low=np.nan, ci_high=np.nan,
                 n_prompts=n, folds=5, seed=0) for layer, a in zip(range(-1, len(accuracies) - 1), accuracies)]
    return pd.DataFrame(rows, columns=PROBE_COLUMNS)


def test_c4_early_onset_is_supported() -> None:
    # embeddings at chance, decoder layers 0..9: reaches 0.99 from layer 2
    depth = c4_row(probe_table([0.5, 0.6, 0.8, 0.99, 0.99] + [0.99] * 6), n_layers=10, relative_level=0.9,
                   threshold=0.5)
    row = depth.row
    assert row["statistic"] == "probe_rel_depth_decodable_at_instruction_token" and depth.layer == 2
    assert row["value"] == pytest.approx(0.3)
    assert row["ci_low"] <= row["value"] <= row["ci_high"] < 0.5
    assert row["verdict"] == "supported"


def test_c4_level_is_relative_to_the_models_best_and_above_chance() -> None:
    # a model whose probe never reaches 0.9 is judged by its own best (0.8): decodable from layer 1
    modest = c4_row(probe_table([0.5, 0.55, 0.8, 0.8] + [0.8] * 7), n_layers=10, relative_level=0.9, threshold=0.5)
    assert modest.layer == 1 and modest.row["verdict"] == "supported"
    # a flat profile near chance is never decodable, however close to its own best
    flat = c4_row(probe_table([0.5] + [0.53, 0.55, 0.54] * 3 + [0.52]), n_layers=10, relative_level=0.9, threshold=0.5)
    assert flat.layer is None and math.isnan(flat.row["value"]) and flat.row["verdict"] == "not supported"


def test_c4_late_onset_is_not_supported() -> None:
    row = c4_row(probe_table([0.5] * 9 + [0.99, 0.99]), n_layers=10, relative_level=0.9, threshold=0.5).row
    assert row["value"] == pytest.approx(0.9) and row["ci_low"] > 0.5
    assert row["verdict"] == "not supported"


def test_c4_never_reaching_the_level_is_not_supported() -> None:
    row = c4_row(probe_table([0.5] * 11), n_layers=10, relative_level=0.9, threshold=0.5).row
    assert math.isnan(row["value"]) and row["verdict"] == "not supported"


def test_c4_borderline_onset_is_inconclusive() -> None:
    # layer 3 (depth 0.4) is just at the level on few prompts: not yet established before 0.5
    row = c4_row(probe_table([0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.925, 1.0, 1.0, 1.0, 1.0], n=40),
                 n_layers=10, relative_level=0.9, threshold=0.5).row
    assert row["value"] == pytest.approx(0.4)
    assert row["ci_low"] < 0.5 < row["ci_high"]
    assert row["verdict"] == "inconclusive"


def test_c4_threshold_sits_between_layers() -> None:
    from harmmed.stats.claims import depth_threshold

    # "the first half" of 10 layers is layers 0-4 (depths 0.1-0.5): the threshold is 0.55, between
    # layer 4's depth and layer 5's; of 25 layers, layers 0-11 are inside: 12.5 / 25 = 0.5
    assert depth_threshold(0.5, 10) == pytest.approx(0.55) and depth_threshold(0.5, 30) == pytest.approx(15.5 / 30)
    assert depth_threshold(0.5, 25) == pytest.approx(0.5) and depth_threshold(1 / 3, 30) == pytest.approx(10.5 / 30)
    assert depth_threshold(0.29, 100) == pytest.approx(0.295)  # 0.29 x 100 is 28.999999999999996 in floats
    # perhaps decodable at layer 3, surely at layer 4, the last of the first half: supported
    edge = c4_row(probe_table([0.5, 0.5, 0.5, 0.5, 0.9] + [0.99] * 6), n_layers=10, relative_level=0.9,
                  threshold=0.5).row
    assert (edge["ci_low"], edge["ci_high"]) == (pytest.approx(0.4), pytest.approx(0.5))
    assert edge["threshold"] == pytest.approx(0.55) and edge["verdict"] == "supported"
    # first decodable at layer 5, the first of the second half: not supported
    after = c4_row(probe_table([0.5] * 6 + [0.99] * 5), n_layers=10, relative_level=0.9, threshold=0.5).row
    assert after["ci_low"] == pytest.approx(0.6) and after["verdict"] == "not supported"


def test_c4_causal_counts_the_layers_between_understanding_and_decision() -> None:
    from harmmed.stats.claims import c4_causal_row

    depth = c4_row(probe_table([0.5, 0.6, 0.8, 0.99, 0.99] + [0.99] * 6), n_layers=10, relative_level=0.9,
                   threshold=0.5)  # decodable from layer 2 (surely from layer 2, perhaps from 1)

    def profile(band: str, layers: str) -> pd.DataFrame:
        return pd.DataFrame({"role": [f"band_{band}_both"], "layers": [layers]})

    late = c4_causal_row(depth, "late", "refusal", profile("late", "7:10"))
    assert late["value"] == 5 and late["verdict"] == "supported"  # understood 5 layers before the decision
    same = c4_causal_row(depth, "early", "refusal", profile("early", "1:4"))
    assert same["value"] == -1 and same["verdict"] == "not supported"  # decided before it is decodable
    at = c4_causal_row(depth, "mid", "refusal", profile("mid", "2:5"))
    assert at["value"] == 0 and at["verdict"] == "not supported"  # decodable only where the decision is made
    assert c4_causal_row(depth, None, "refusal", profile("late", "7:10"))["verdict"] == "not run"
    never = c4_row(probe_table([0.5] * 11), n_layers=10, relative_level=0.9, threshold=0.5)
    assert c4_causal_row(never, "late", "refusal", profile("late", "7:10"))["verdict"] == "not supported"


def test_c4_ignores_embeddings_and_shuffled_rows() -> None:
    table = probe_table([0.99] + [0.5] * 5 + [0.99] * 5)
    shuffled = table.assign(condition="shuffled", accuracy=1.0)
    row = c4_row(pd.concat([table, shuffled]), n_layers=10, relative_level=0.9, threshold=0.5).row
    assert row["value"] == pytest.approx(0.6)
    other = table.assign(position="last", accuracy=0.99)  # another position never enters the row
    assert c4_row(pd.concat([table, other]), n_layers=10, relative_level=0.9, threshold=0.5).layer == 5


# ---------------------------------------------------------------- token roles
def tiny_pair(index: int = 0) -> tuple[str, EncodedPair]:
    tokenizer = tiny_tokenizer()
    _category, harmful, benign, target, _ = TINY_PAIRS[index]
    harmful_ids, post = encode_prompt(tokenizer, harmful)
    benign_ids, _ = encode_prompt(tokenizer, benign)
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    return harmful, EncodedPair(f"p{index}", "discovery", _category, harmful_ids, benign_ids, target_ids, post)


def test_roles_on_the_tiny_template() -> None:
    tokenizer = tiny_tokenizer()
    request, pair = tiny_pair(0)  # "<|user|> explain how to make a bomb at home . <|end|> <|assistant|>"
    roles = position_roles(tokenizer, request, pair.harmful_ids, pair.benign_ids, pair.post_positions)
    assert len(roles) == len(pair.harmful_ids)
    diff = [i for i, (h, b) in enumerate(zip(pair.harmful_ids, pair.benign_ids)) if h != b]
    assert [i for i, r in enumerate(roles) if r == "span"] == diff == [6]
    assert roles[0] == "template"
    assert [i for i, r in enumerate(roles) if r == "post"] == pair.post_positions == [10, 11]
    assert roles[1:6] == ["before_span"] * 5 and roles[7:10] == ["after_span"] * 3
    assert set(roles) <= set(ROLES)


def test_roles_reject_a_request_that_does_not_match_the_ids() -> None:
    _, pair = tiny_pair(0)
    with pytest.raises(ValueError):
        position_roles(tiny_tokenizer(), "explain how to make a kite at home .", pair.harmful_ids,
                       pair.benign_ids, pair.post_positions)


def test_unpaired_roles_patch_only_right_aligned_post_positions() -> None:
    harmful = [2, 10, 11, 12, 3, 4]
    benign = [2, 13, 3, 4]
    roles = position_roles(tiny_tokenizer(), "unused", harmful, benign, [4, 5])
    assert roles == ["unaligned", "unaligned", "post", "post"]


# ---------------------------------------------------------------- token rows on a tiny model
@pytest.fixture(scope="module")
def engine() -> MediationEngine:
    torch.set_num_threads(1)  # as the stages do; the tiny model gains nothing from more
    return MediationEngine(tiny_model("llama"), refusal_ids=[3, 5, 7])


def test_token_rows_zero_outside_the_span(engine: MediationEngine) -> None:
    request, pair = tiny_pair(1)
    roles = position_roles(tiny_tokenizer(), request, pair.harmful_ids, pair.benign_ids, pair.post_positions)
    from harmmed.analyses.pairs import clean_runs

    runs = clean_runs(engine, pair)
    before = engine.stats["forward_passes"]
    rows = token_rows(engine, pair, roles, runs)
    n_span = roles.count("span")
    assert engine.stats["forward_passes"] - before <= 2 * n_span  # a prefix cache and a patched pass at most
    assert len(rows) == len(pair.harmful_ids) * len(METRICS)
    frame = pd.DataFrame(rows)
    assert list(frame.columns) == ROW_COLUMNS + ["role"]
    assert set(frame["kind"]) == {"NIE"} and set(frame["site"]) == {"residual"}
    assert set(frame["layer"]) == {-1} and set(frame["window"]) == {1}
    outside = frame[frame["role"] != "span"]
    assert (outside["effect"] == 0.0).all() and (outside["y_patched"] == outside["y_benign"]).all()
    assert (frame.loc[frame["role"] == "before_span", "effect"] == 0.0).all()
    span = frame[frame["role"] == "span"]
    assert (span["effect"].abs() > 0).any()


# ---------------------------------------------------------------- stages end to end (tiny)
@pytest.fixture(scope="module")
def tiny_stage(tmp_path_factory):
    work = tmp_path_factory.mktemp("token_probe")
    save_tiny_model(work / "model")
    write_tiny_pairs(work / "pairs.csv")
    cfg = validate_config({
        "models": [{"name": "tiny", "source": "local", "path": str(work / "model")}],
        "prompts": {"pairs_file": str(work / "pairs.csv")},
        "metrics": {"refusal_phrases": ["Sorry", "I cannot"]},
        "token": {"split": "all", "max_pairs": 2},
        "probe": {"folds": 3},
    })
    from harmmed.stages import download_model

    manifest = download_model(cfg, "tiny", work / "models", work / "manifest.json")  # the checked record
    prepare_prompts(cfg, manifest, work / "pairs.csv", work / "inputs.jsonl", work / "dropped.csv")
    return work, cfg, manifest


def test_token_stage_and_figure_are_deterministic(tiny_stage) -> None:
    work, cfg, manifest = tiny_stage
    for name in ("a", "b"):
        mediate_token(cfg, manifest, work / "inputs.jsonl", work / f"token_{name}.csv")
    first = (work / "token_a.csv").read_bytes()
    assert first == (work / "token_b.csv").read_bytes()
    token_df = pd.read_csv(work / "token_a.csv", dtype={"positions": str})
    inputs = read_inputs(work / "inputs.jsonl")
    lengths = {p.pair_id: len(p.harmful_ids) for p in inputs}
    assert token_df["pair_id"].nunique() == 2
    assert len(token_df) == 2 * sum(lengths[p] for p in set(token_df["pair_id"]))
    written = [plot_token_heatmap(token_df, inputs, manifest, work / f"fig_{name}" / "token_heatmap")
               for name in ("a", "b")]
    assert [p.name for p in written[0]] == ["token_heatmap_harm.png", "token_heatmap_harm.pdf",
                                            "token_heatmap_refusal.png", "token_heatmap_refusal.pdf"]
    for a, b in zip(*written):
        assert a.stat().st_size > 1000 and a.read_bytes() == b.read_bytes()


def test_probe_stage_and_figure(tiny_stage) -> None:
    work, cfg, manifest = tiny_stage
    df = run_probe(cfg, manifest, work / "inputs.jsonl", work / "probe.csv")
    again = run_probe(cfg, manifest, work / "inputs.jsonl", work / "probe_again.csv")
    assert (work / "probe.csv").read_bytes() == (work / "probe_again.csv").read_bytes()
    assert len(again) == 2 * 2 * 5  # positions x conditions x layers -1..3
    assert set(df["position"]) == {"instruction", "last"}
    assert list(df.columns) == PROBE_COLUMNS and set(df["n_prompts"]) == {2 * len(TINY_PAIRS)}
    embeddings = df[(df["layer"] == -1) & (df["position"] == "last")]  # the same template token in every prompt
    assert (embeddings["accuracy"] <= 0.5).all()
    written = plot_probe(df, manifest, work / "probe_accuracy")
    assert [p.name for p in written] == ["probe_accuracy.png", "probe_accuracy.pdf"]
    assert written[0].stat().st_size > 1000
    assert json.loads(json.dumps(c4_row(df, 4, 0.9, 0.5).row))["claim"] == "C4"
