"""Load and validate the replication config.

The contract is the JSON schema ``workflow/schemas/config.schema.yaml``. It is
looked up, in order, at

1. the ``schema_path`` argument, when given;
2. ``<repo root>/workflow/schemas/config.schema.yaml``, where the repo root is
   ``Path(__file__).resolve().parents[2]``. This holds for the editable install
   (``pip install -e .``) and for running from a checkout with ``src/`` on
   ``sys.path``; a non-editable install has no schema next to it and must pass
   ``schema_path`` explicitly.

Validation fills in the schema's defaults for optional keys, so downstream
code can index ``cfg["effects"]["ci"]`` without ``.get``. Errors are raised as
:class:`ConfigError` with one line per problem, each naming the key path
(``models[0].revision: ...``) and the file the config came from.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import validators

__all__ = [
    "ConfigError",
    "model_spec",
    "DEFAULT_SCHEMA_PATH",
    "default_schema_path",
    "load_config",
    "load_schema",
    "validate_config",
]

#: Where the schema lives in a checkout (see module docstring).
DEFAULT_SCHEMA_PATH = (
    Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
)


class ConfigError(ValueError):
    """The config file is missing, unreadable or does not satisfy the schema."""


# --------------------------------------------------------------------------- schema


def default_schema_path() -> Path:
    """Return the schema path of the checkout, or raise ConfigError if absent."""
    if not DEFAULT_SCHEMA_PATH.is_file():
        raise ConfigError(
            f"config schema not found at {DEFAULT_SCHEMA_PATH} (harmmed is not installed "
            "from a checkout); pass schema_path= explicitly"
        )
    return DEFAULT_SCHEMA_PATH


_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# (resolved schema path, mtime_ns) -> (schema, validator class); checking the
# schema against its metaschema is the slow part, so it is done once per file.
_SCHEMA_CACHE: dict[tuple[str, int], tuple[dict[str, Any], Any]] = {}


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    """The safe loader, refusing a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)  # merge keys (<<: *anchor) first, as the safe loader does
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {seen[key] + 1}); keep one",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 (safe loader)


def load_schema(schema_path: str | Path | None = None) -> dict[str, Any]:
    """Read the YAML schema (``schema_path`` or the checkout's default)."""
    return copy.deepcopy(_compiled_schema(schema_path)[0])


def _compiled_schema(schema_path: str | Path | None) -> tuple[dict[str, Any], Any]:
    path = Path(schema_path) if schema_path is not None else default_schema_path()
    try:
        key = (str(path.resolve()), path.stat().st_mtime_ns)
    except OSError as exc:
        raise ConfigError(f"cannot read config schema {path}: {exc}") from exc
    if key in _SCHEMA_CACHE:
        return _SCHEMA_CACHE[key]
    try:
        schema = _read_yaml(path)
    except OSError as exc:
        raise ConfigError(f"cannot read config schema {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config schema {path} is not valid YAML: {exc}") from exc
    if not isinstance(schema, dict):
        raise ConfigError(f"config schema {path} must be a mapping")
    base = validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        base.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"invalid config schema {path}: {exc.message}") from exc
    _SCHEMA_CACHE[key] = (schema, _extend_with_defaults(base))
    return _SCHEMA_CACHE[key]


def _extend_with_defaults(validator_class):
    """A validator class that fills ``default`` values of ``properties``.

    Defaults are deep-copied (the schema's lists and dicts are never shared
    with the config) and only set on objects, so a wrongly typed section is
    reported as a type error rather than crashing.
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    if key not in instance:
                        instance[key] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    # An integer is an int: JSON Schema would take 4.0, which later fails as a count or index.
    integers = validator_class.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
    return validators.extend(validator_class, {"properties": set_defaults}, type_checker=integers)


# --------------------------------------------------------------------------- messages


def _format_path(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _join(path: str, key: Any) -> str:
    return _format_path([key]) if path == "<root>" else _format_path([path, key])


def _error_lines(error: jsonschema.ValidationError, root: Any) -> list[str]:
    """One or more ``path: message`` lines for a schema error."""
    path = _format_path(error.absolute_path)
    kind = error.validator
    instance = error.instance

    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(k for k in instance if k not in error.schema.get("properties", {}))
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return [f"{_join(path, key)}: not supported: a model folder's own code never runs; remove the key"
                if key == "trust_remote_code" else f"{_join(path, key)}: unknown key{hint}" for key in extra]

    if kind == "required" and isinstance(instance, dict):
        missing = [k for k in error.validator_value if k not in instance]
        return [f"{_join(path, key)}: required key is missing" for key in missing]

    if kind == "not" and error.validator_value == {}:
        # '#/$defs/forbidden': a key that belongs to another model source.
        parent: Any = root
        for part in list(error.absolute_path)[:-1]:
            parent = parent[part]
        src = parent.get("source") if isinstance(parent, dict) else None
        return [f"{path}: not allowed when source is {src!r}"]

    if kind == "not" and error.validator_value == {"multipleOf": 2}:
        return [f"{path}: {instance!r} must be odd"]

    if kind == "pattern" and path.endswith((".name", ".base")):
        return [f"{path}: {instance!r} is not a plain file name (letters, digits, '.', '_', '-', starting with a "
                "letter or digit): it names folders under results/ and data/models/"]

    return [f"{path}: {error.message}"]


# --------------------------------------------------------------------------- checks


def _non_finite(value: Any, path: str = "") -> list[str]:
    """Keys whose value is NaN or infinite (they pass every minimum and maximum)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: {value} is not a finite number"]
    if isinstance(value, Mapping):
        return [p for key, item in value.items() for p in _non_finite(item, f"{path}.{key}" if path else str(key))]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _non_finite(item, f"{path}[{i}]")]
    return []


def _code_checks(cfg: Mapping[str, Any]) -> list[str]:
    """Checks that JSON Schema cannot express."""
    problems = _non_finite(cfg)
    seen: dict[str, int] = {}
    for i, model in enumerate(cfg.get("models") or []):
        name = model.get("name") if isinstance(model, dict) else None
        if not isinstance(name, str):
            continue
        if name in RESERVED_NAMES or name.lower().endswith(RESERVED_SUFFIXES):
            problems.append(f"models[{i}].name: {name!r} is the name of a workflow output under results/ "
                            "(the judge's folder, or a table or figure file); choose another")
        if name in seen:
            problems.append(
                f"models[{i}].name: duplicate model name {name!r} (also models[{seen[name]}].name)"
            )
        else:
            seen[name] = i
        problems += _skip_checks(model.get("skip_stages") or [], f"models[{i}].skip_stages")
        problems += _scored_checks(cfg, model["scored_metrics"], f"models[{i}].scored_metrics")
    problems += _finetune_checks(cfg.get("models") or [])
    prompts = cfg.get("prompts") or {}
    mediation = cfg.get("mediation") or {}
    if (prompts.get("public") or {}).get("enabled") and prompts.get("mode") == "minimal":
        problems.append("prompts.mode: public benchmark prompts are not minimal pairs; set mode: unpaired or noise")
    public = prompts.get("public") or {}
    if public.get("url_overrides") or public.get("local_files"):
        from .datasets.public_datasets import SOURCES, check_override_url

        for key in ("url_overrides", "local_files"):
            for name in sorted(set(public.get(key) or {}) - set(SOURCES)):
                problems.append(f"prompts.public.{key}.{name}: unknown source name; known: {', '.join(sorted(SOURCES))}")
        for name, url in sorted((public.get("url_overrides") or {}).items()):
            try:
                check_override_url(name, url)
            except ValueError as err:
                problems.append(str(err))
    if prompts.get("mode") == "unpaired":
        for key in ("layer_positions", "module_positions"):
            if "all" in (mediation.get(key) or []):
                problems.append(f"mediation.{key}: 'all' needs token-aligned minimal pairs (mode unpaired)")
        if mediation.get("severed_positions") == "all":
            problems.append("mediation.severed_positions: 'all' needs token-aligned minimal pairs (mode unpaired)")
    return problems


# results/<name> is the model's folder: names the workflow writes beside the models are taken.
RESERVED_NAMES = ("judge",)
RESERVED_SUFFIXES = (".csv", ".json", ".jsonl", ".png", ".pdf", ".md", ".html", ".tar.gz", ".sha256")

# Stages whose outputs other per-model stages read: skipping one means skipping its readers.
SKIP_READERS = {"gating": ("figures", "generate"),  # the neuron figures; generation's gated run
                "mediate_layer": ("figures",),  # the layer curves
                "mediate_module": ("figures",)}  # the module curves


def _scored_checks(cfg: Mapping[str, Any], scored: list[str], key: str) -> list[str]:
    """The metrics other settings rank or judge by must be scored: the gating test and recovery
    rank units by ``gating.metric``, calibration judges ``calibration.metric``."""
    readers = {"gating.metric": cfg["gating"]["metric"], "calibration.metric": cfg["calibration"]["metric"]}
    return [f"{key}: leaves out {metric!r}, which {reader} reads; add it" for reader, metric in readers.items()
            if metric not in scored]


def _skip_checks(skipped: list[str], key: str) -> list[str]:
    return [f"{key}: {stage!r} feeds {reader!r}; skip {reader!r} too"
            for stage, readers in SKIP_READERS.items() if stage in skipped
            for reader in readers if reader not in skipped]


def _finetune_checks(models: list[Any]) -> list[str]:
    """A fine-tune's base must be another, non-finetune model; its trainable spec must parse; only
    a neuron plant has units to drop."""
    from .models.components import ComponentSpecError, parse_trainable

    sources = {m.get("name"): m.get("source") for m in models if isinstance(m, dict)}
    problems = []
    for i, model in enumerate(models):
        if not isinstance(model, dict) or model.get("source") != "finetune":
            continue
        base = model.get("base")
        if base not in sources:
            problems.append(f"models[{i}].base: no model named {base!r} in models")
        elif sources[base] == "finetune":
            problems.append(f"models[{i}].base: {base!r} is itself a fine-tune; name a downloaded model")
        try:
            spec = parse_trainable(model.get("trainable"), f"models[{i}].trainable")
        except ComponentSpecError as err:
            problems.append(str(err))
            continue
        for key, what in (("unit_dropout", "units to drop"), ("spread_units", "units to spread")):
            if model.get(key) and spec.site != "neuron":
                problems.append(f"models[{i}].{key}: only a trainable {{site: neuron}} plant has {what}")
        if spec.site != "all" and "recovery" in (model.get("skip_stages") or []):
            problems.append(f"models[{i}].skip_stages: a plant's recovery is its ground truth, which the "
                            "calibration reads; remove 'recovery'")
    return problems


# --------------------------------------------------------------------------- API


def validate_config(
    cfg: dict[str, Any],
    schema_path: str | Path | None = None,
    *,
    source: str | Path | None = None,
) -> dict[str, Any]:
    """Validate ``cfg`` against the schema and fill in defaults.

    ``source`` names the file in error messages (``load_config`` passes it).
    Validation runs on a deep copy; only when it succeeds is ``cfg`` updated in
    place with the filled-in defaults (so that, e.g., Snakemake's global
    ``config`` seen by rule scripts carries them too) and returned. On failure
    ``cfg`` is left untouched and :class:`ConfigError` lists every problem.
    """
    where = str(source) if source is not None else "<config>"
    if not isinstance(cfg, dict):
        raise ConfigError(
            f"{where}: the config must be a mapping at the top level, got {type(cfg).__name__}"
        )

    schema, validator_class = _compiled_schema(schema_path)
    validator = validator_class(schema)

    filled = copy.deepcopy(cfg)
    errors = sorted(
        validator.iter_errors(filled),
        key=lambda e: (_format_path(e.absolute_path), str(e.message)),
    )
    lines: list[str] = []
    for err in errors:
        for line in _error_lines(err, filled):
            if line not in lines:
                lines.append(line)
    if not lines:
        lines = _code_checks(filled)
    if lines:
        header = f"invalid config {where}:" if len(lines) > 1 else f"invalid config {where}: "
        sep = "\n  " if len(lines) > 1 else ""
        raise ConfigError(header + sep + sep.join(lines))

    cfg.update(filled)
    return cfg


def typed_overrides(values: Any) -> Any:
    """``--config`` values as YAML would type them: Snakemake reads ``effects={ci: 0.9}`` with
    YAML's base loader, so every leaf arrives as a string ('0.9'); typed here, once."""
    if isinstance(values, Mapping):
        return {key: typed_overrides(value) for key, value in values.items()}
    if isinstance(values, (list, tuple)):
        return [typed_overrides(value) for value in values]
    if isinstance(values, str):
        try:
            return yaml.load(values, Loader=_SafeLoader)  # noqa: S506 (safe loader)
        except yaml.YAMLError:
            return values
    return values


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """A YAML error in one line, with the line and column where it was found."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def load_config(path: str | Path, schema_path: str | Path | None = None) -> dict[str, Any]:
    """Read a YAML config file, validate it and return it with defaults filled in."""
    path = Path(path)
    try:
        cfg = _read_yaml(path)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {yaml_error_line(exc)}") from exc
    if cfg is None:
        raise ConfigError(f"config {path} is empty")
    return validate_config(cfg, schema_path, source=path)


def model_spec(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The ``models`` entry called ``name``."""
    for spec in cfg["models"]:
        if spec["name"] == name:
            return spec
    raise KeyError(f"models: no model named {name!r}")


def main(argv: list[str] | None = None) -> int:
    """``python -m harmmed.config FILE``: check a config file before any workflow runs; one line
    on failure (the file, the key or the YAML line), exit status 2."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harmmed.config CONFIG.yaml", file=sys.stderr)
        return 2
    try:
        load_config(args[0])
    except ConfigError as err:
        print(f"error: {' '.join(str(err).split())}" if "\n" not in str(err) else f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
