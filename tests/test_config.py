"""Config contract: the default config validates, defaults are filled, bad configs are named."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from harmmed.config import (
    DEFAULT_SCHEMA_PATH,
    ConfigError,
    load_config,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"

HUB_MODEL = {
    "name": "hub-model",
    "source": "hub",
    "repo_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "revision": "0123456789abcdef0123456789abcdef01234567",
}


@pytest.fixture(scope="module")
def raw() -> dict:
    with open(DEFAULT_CONFIG, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture
def cfg(raw) -> dict:
    """The default config with its base model only (the fine-tunes need it; tests add models)."""
    out = copy.deepcopy(raw)
    out["models"] = out["models"][:1]
    return out


def error_of(cfg: dict, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, **kwargs)
    return str(info.value)


def test_schema_is_found_in_checkout():
    assert DEFAULT_SCHEMA_PATH == SCHEMA
    assert SCHEMA.is_file()


def test_default_config_loads(raw):
    cfg = load_config(DEFAULT_CONFIG)

    def assert_kept(given, filled, path):
        """Everything the file sets survives unchanged (defaults may add keys beside it)."""
        if isinstance(given, dict):
            for key, sub in given.items():
                assert_kept(sub, filled[key], f"{path}.{key}")
        elif isinstance(given, list) and given and isinstance(given[0], dict):
            assert len(filled) == len(given), path
            for i, (sub, out) in enumerate(zip(given, filled)):
                assert_kept(sub, out, f"{path}[{i}]")
        else:
            assert filled == given, path

    assert_kept(raw, cfg, "config")
    assert cfg["models"][0]["name"] == "smollm2-135m-instruct"


def test_explicit_schema_path(cfg):
    assert validate_config(cfg, SCHEMA)["effects"]["ci"] == 0.95


def test_missing_optional_keys_get_defaults(cfg):
    del cfg["effects"]  # whole section
    del cfg["mediation"]["windows"]  # one key
    del cfg["prompts"]["public"]  # nested section
    cfg["models"][0].pop("dtype")
    cfg["models"][0].pop("device")
    out = validate_config(cfg)
    assert out is cfg  # filled in place
    assert out["effects"] == {"bootstrap_samples": 2000, "ci": 0.95, "seed": 0, "min_abs_te": 0.1}
    assert out["mediation"]["windows"] == [1, 5]
    assert out["prompts"]["public"]["enabled"] is False
    assert out["prompts"]["public"]["harmful"] == ["advbench"]
    assert out["models"][0]["dtype"] == "float32"
    assert out["models"][0]["device"] == "cpu"


def test_minimal_config_gets_every_section(cfg):
    out = validate_config({"models": cfg["models"]})
    assert out["claims"]["thresholds"]["C3_gate_share"] == 0.5
    assert out["mediation"]["heatmap"]["sites"] == ["residual", "mlp", "attn"]
    assert out["mediation"]["max_pairs"] == 6
    # Defaults are copies: editing one config must not leak into the next.
    out["mediation"]["heatmap"]["sites"].append("x")
    assert validate_config({"models": cfg["models"]})["mediation"]["heatmap"]["sites"] == [
        "residual",
        "mlp",
        "attn",
    ]


def test_hub_and_local_models_validate(cfg):
    cfg["models"].append(dict(HUB_MODEL))
    cfg["models"].append({"name": "mine", "source": "local", "path": "data/models/mine"})
    cfg["mediation"]["max_pairs"] = None
    cfg["neuron"] = {"extra_layers": [-2, 3]}
    validate_config(cfg)


def test_failed_validation_leaves_input_untouched(cfg):
    del cfg["effects"]
    cfg["engine"]["memory_budget_mb"] = "lots"
    before = copy.deepcopy(cfg)
    error_of(cfg)
    assert cfg == before


@pytest.mark.parametrize(
    "mutate, expected",
    [
        # wrong type
        (lambda c: c["effects"].update(bootstrap_samples="many"), "effects.bootstrap_samples: 'many' is not of type 'integer'"),
        (lambda c: c.update(prompts=[1]), "prompts: [1] is not of type 'object'"),
        # unknown keys, at the top and nested
        (lambda c: c.update(extra=1), "extra: unknown key"),
        (lambda c: c["mediation"]["heatmap"].update(colour="red"), "mediation.heatmap.colour: unknown key"),
        (lambda c: c["models"][0].update(revison="x"), "models[0].revison: unknown key"),
        # bad dtype
        (lambda c: c["models"][0].update(dtype="float64"), "models[0].dtype: 'float64' is not one of"),
        # source-specific requirements
        (lambda c: c["models"][0].pop("gguf_sha256"), "models[0].gguf_sha256: required key is missing"),
        (lambda c: c["models"][0].update(wheel_sha256="ABC"), "models[0].wheel_sha256: 'ABC' does not match"),
        (lambda c: c["models"][0].update(revision="a" * 40), "models[0].revision: not allowed when source is 'pypi_gguf'"),
        (lambda c: c["models"].append({"name": "l", "source": "local"}), "models[1].path: required key is missing"),
        (lambda c: c["models"].append({"name": "a b", "source": "local", "path": "p"}), "models[1].name: 'a b' is not a plain file name"),
        (lambda c: c["models"][0].update(source="s3"), "models[0].source: 's3' is not one of"),
        (lambda c: c.update(models=[]), "models: [] should be non-empty"),
        (lambda c: c.pop("models"), "models: required key is missing"),
        # ranges and enums
        (lambda c: c["mediation"].update(windows=[1, 4]), "mediation.windows[1]: 4 must be odd"),
        (lambda c: c["mediation"].update(windows=[0]), "mediation.windows[0]: 0 is less than the minimum of 1"),
        (lambda c: c["mediation"].update(max_pairs=0), "mediation.max_pairs: 0 is less than the minimum of 1"),
        (lambda c: c["mediation"].update(split="train"), "mediation.split: 'train' is not one of"),
        (lambda c: c["mediation"].update(layer_positions=["first"]), "mediation.layer_positions[0]: 'first' is not one of"),
        (lambda c: c["mediation"]["heatmap"].update(sites=["ln"]), "mediation.heatmap.sites[0]: 'ln' is not one of"),
        (lambda c: c["prompts"].update(mode="paired"), "prompts.mode: 'paired' is not one of"),
        (lambda c: c["prompts"].update(discovery_fraction=1.0), "prompts.discovery_fraction: 1.0 is greater than or equal to the maximum of 1"),
        (lambda c: c["effects"].update(ci=0), "effects.ci: 0 is less than or equal to the minimum of 0"),
        (lambda c: c["effects"].update(bootstrap_samples=10), "effects.bootstrap_samples: 10 is less than the minimum of 100"),
        (lambda c: c["engine"].update(memory_budget_mb=16), "engine.memory_budget_mb: 16 is less than the minimum of 64"),
        (lambda c: c["metrics"].update(refusal_phrases=[]), "metrics.refusal_phrases: [] should be non-empty"),
    ],
)
def test_bad_config_names_key_path(cfg, mutate, expected):
    mutate(cfg)
    message = error_of(cfg)
    assert expected in message
    assert "<config>" in message  # no file given: a placeholder names the source


def test_bad_hub_revision(cfg):
    cfg["models"].append(dict(HUB_MODEL, revision="main"))
    message = error_of(cfg)
    assert "models[1].revision: 'main' does not match '^[0-9a-f]{40}$'" in message


def test_hub_requires_repo_and_revision(cfg):
    cfg["models"] = [{"name": "h", "source": "hub"}]
    message = error_of(cfg)
    assert "models[0].repo_id: required key is missing" in message
    assert "models[0].revision: required key is missing" in message


def test_duplicate_model_names(cfg):
    cfg["models"].append(dict(HUB_MODEL, name=cfg["models"][0]["name"]))
    message = error_of(cfg)
    assert "models[1].name: duplicate model name 'smollm2-135m-instruct'" in message


@pytest.mark.parametrize("skipped, missing", [
    (["gating"], ["'figures'", "'generate'"]),
    (["gating", "figures"], ["'generate'"]),
])
def test_skipping_a_stage_others_read_names_its_readers(cfg, skipped, missing):
    cfg["models"][0]["skip_stages"] = skipped
    message = error_of(cfg)
    for reader in missing:
        assert f"models[0].skip_stages: 'gating' feeds {reader}; skip {reader} too" in message
    assert message.count("'gating' feeds") == len(missing)


def test_skipping_gating_with_its_readers_is_valid(cfg):
    cfg["models"][0]["skip_stages"] = ["gating", "figures", "generate"]
    assert validate_config(cfg)["models"][0]["skip_stages"] == ["gating", "figures", "generate"]


def test_scored_metrics_must_hold_what_gating_and_calibration_read(cfg):
    cfg["models"][0]["scored_metrics"] = ["harm"]
    message = error_of(cfg)
    assert "models[0].scored_metrics: leaves out 'refusal', which gating.metric reads; add it" in message
    assert "models[0].scored_metrics: leaves out 'refusal', which calibration.metric reads; add it" in message
    cfg["models"][0]["scored_metrics"] = ["refusal"]
    assert validate_config(cfg)["models"][0]["scored_metrics"] == ["refusal"]


def test_error_names_the_file(tmp_path, raw):
    bad = copy.deepcopy(raw)
    bad["models"] = bad["models"][:1] + [dict(HUB_MODEL, revision="main")]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "models[1].revision" in str(info.value)


def test_several_errors_are_all_reported(cfg):
    cfg["models"][0]["dtype"] = "int8"
    cfg["effects"]["ci"] = 2
    message = error_of(cfg)
    assert "models[0].dtype" in message and "effects.ci" in message


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "models: [\n"])
def test_unusable_files(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="c.yaml"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("text, message", [
    ("effects:\n  ci: .nan\n", "effects.ci: nan is not a finite number"),
    ("verify:\n  tolerance: .inf\n", "verify.tolerance: inf is not a finite number"),
    ("gating:\n  top_k: 4.0\n", "gating.top_k: 4.0 is not of type 'integer'"),
    ("effects:\n  ci: 0.9\neffects:\n  ci: 0.8\n", "line 5, column 1: key 'effects' is given twice (first on line 3)"),
    ("models:\n  - {name: judge, source: local, path: x}\n", "models[0].name: 'judge' is the name of a workflow output"),
    ("models:\n  - {name: claims.csv, source: local, path: x}\n", "'claims.csv' is the name of a workflow output"),
])
def test_values_the_schema_cannot_refuse_are_refused_by_key(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    models = "" if text.startswith("models") else "models:\n  - {name: m, source: local, path: x}\n"
    path.write_text(models + text, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_command_line_values_are_typed_as_yaml():
    from harmmed.config import typed_overrides

    assert typed_overrides({"effects": {"ci": "0.9"}, "mediation": {"windows": ["1", "3"]}, "tag": "x"}) == \
        {"effects": {"ci": 0.9}, "mediation": {"windows": [1, 3]}, "tag": "x"}


def test_calibration_grid_holds_the_default_models_and_both_sides_of_every_claim() -> None:
    """The grid copies the default run's models verbatim (their results are shared); both give each
    claim but C4 an expected `supported` and an expected `not supported` plant."""
    import yaml

    from harmmed.config import validate_config

    root = Path(__file__).parents[1]
    default = yaml.safe_load((root / "config" / "config.yaml").read_text())["models"]
    grid = validate_config(yaml.safe_load((root / "config" / "calibration_grid.yaml").read_text()))["models"]
    raw = yaml.safe_load((root / "config" / "calibration_grid.yaml").read_text())["models"]
    assert raw[: len(default)] == default
    for models in (default, grid):
        sides: dict[str, set[str]] = {}
        for model in models:
            for claim, verdict in (model.get("expected_verdicts") or {}).items():
                sides.setdefault(claim, set()).add(verdict)
        assert all(sides[claim] == {"supported", "not supported"} for claim in
                   ("C1-route", "C1-origin", "C2-route", "C2-origin", "C3", "C4-causal")), sides
    assert len({m["name"] for m in grid}) == len(grid) > len(default) + 12
