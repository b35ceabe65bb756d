"""Sharded model stages: shard i of N takes a contiguous run of pairs, and the merged tables are
byte-identical to one unsharded job (the workflow's `shards: N`)."""

from __future__ import annotations

import hashlib

import pytest
from test_workflow import tiny_config

from harmmed import stages
from harmmed.config import load_config
from harmmed.io.shards import concat_tables, parse_shard, shard_ids, shard_offset, take_shard


def test_shards_cover_the_items_once_in_order():
    items = list(range(7))
    for count in (1, 2, 3, 7, 9):
        parts = [take_shard(items, parse_shard(s)) for s in shard_ids(count)]
        assert sum(parts, []) == items
        assert [shard_offset(len(items), parse_shard(s)) for s in shard_ids(count)] == \
            [sum(len(p) for p in parts[:i]) for i in range(count)]
    assert shard_ids(3) == ["0of3", "1of3", "2of3"]


@pytest.mark.parametrize("bad", ["3of3", "1-of-2", "of2", "-1of2"])
def test_bad_shard_ids_are_refused(bad):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(bad)


def test_concat_refuses_mismatched_headers(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    (tmp_path / "b.csv").write_text("x,z\n3,4\n")
    with pytest.raises(ValueError, match="b.csv: header"):
        concat_tables([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


SHARDED = {  # stage -> (its output tables, how to call it)
    "layer": (["layer.csv", "severed.csv"], lambda cfg, m, i, out, shard: stages.mediate_layer(
        cfg, m, i, out["layer.csv"], out["severed.csv"], shard=shard)),
    "module": (["module.csv"], lambda cfg, m, i, out, shard: stages.mediate_module(
        cfg, m, i, out["module.csv"], shard=shard)),
    "heatmap": (["heatmap.csv", "heatmap_tokens.json"], lambda cfg, m, i, out, shard: stages.mediate_heatmap(
        cfg, m, i, out["heatmap.csv"], out["heatmap_tokens.json"], shard=shard)),
    "token": (["token.csv"], lambda cfg, m, i, out, shard: stages.mediate_token(
        cfg, m, i, out["token.csv"], shard=shard)),
    # every-layer blocks on the first pair only (block_max_pairs 1): a later shard must not add them
    "neuron": (["neuron.csv"], lambda cfg, m, i, out, shard: stages.mediate_neuron(
        cfg, m, i, out["neuron.csv"], shard=shard)),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    work = tmp_path_factory.mktemp("shards")
    cfg = load_config(tiny_config(work))
    cfg["mediation"]["heatmap"]["n_pairs"] = 2  # two heatmap pairs, so a 3-way split has an empty shard
    cfg["token"]["max_pairs"] = 5
    stages.download_model(cfg, "tiny", work / "models", work / "manifest.json")
    stages.prepare_prompts(cfg, work / "manifest.json", cfg["prompts"]["pairs_file"], work / "inputs.jsonl",
                           work / "dropped.csv")
    return work, cfg


@pytest.mark.parametrize("stage", sorted(SHARDED))
def test_merged_shards_are_byte_identical_to_one_job(prepared, stage):
    work, cfg = prepared
    names, run = SHARDED[stage]
    whole = {n: work / stage / "whole" / n for n in names}
    run(cfg, work / "manifest.json", work / "inputs.jsonl", whole, (0, 1))
    parts = []
    for shard_id in shard_ids(3):
        part = {n: work / stage / shard_id / n for n in names}
        run(cfg, work / "manifest.json", work / "inputs.jsonl", part, parse_shard(shard_id))
        parts.append(part)
    for name in names:
        merged = work / stage / "merged" / name
        stages.merge_shards([str(p[name]) for p in parts], merged)
        digest = hashlib.sha256(merged.read_bytes()).hexdigest()
        assert digest == hashlib.sha256(whole[name].read_bytes()).hexdigest(), f"{stage}: {name} differs"
        assert len(whole[name].read_bytes()) > 200, name  # real rows, not just a header
        print(f"{stage} {name} sha256 {digest[:16]} (3 shards merged == 1 job)")
