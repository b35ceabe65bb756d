"""config/README.md documents every key of the config schema, with the schema's default.

How the test reads config/README.md (write new rows the same way):

- A ``## <path> ...`` heading names the config object its tables document: the heading's first
  word is the object's path (``## claims.thresholds``, ``## mediation (layer, ...)``). A list of
  objects is entered with ``[]``: the rows under ``## models`` document ``models[].<key>``.
- In a table with a ``key`` and a ``default`` column, a row documents every key its key cell
  names in backticks, relative to the heading: ``public.n_pairs`` under ``## prompts`` is
  ``prompts.public.n_pairs``. A row whose key is the heading's own path documents that key
  (``## shards``, row ``shards``).
- The default cell gives the default of the n-th key of the row as its n-th backticked value, in
  YAML (``[all, post, last]``, ``null``, ``1.0e-4``); text around the values is free, and a key
  without a schema default needs no value (``required``, ``(hub)``).

Every property path of the schema must be documented this way, except objects whose own keys are
(``claims.thresholds`` is covered by its rows); where the schema has a ``default``, the row must
state the same value. Keys the README documents must exist in the schema.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
README_PATH = ROOT / "config" / "README.md"

CELL_SPLIT = re.compile(r"(?<!\\)\|")  # `\|` inside a cell is a literal bar
BACKTICKED = re.compile(r"`([^`]+)`")


# ------------------------------------------------------------------ the schema's property paths
def resolve(node: dict, schema: dict) -> dict:
    """The node with a local ``$ref`` merged in (the node's own keys win, as in the schema)."""
    if "$ref" not in node:
        return node
    pointer = node["$ref"].removeprefix("#/").split("/")
    target = schema
    for part in pointer:
        target = target[part]
    return {**resolve(target, schema), **{k: v for k, v in node.items() if k != "$ref"}}


def object_properties(node: dict, schema: dict) -> dict | None:
    """The properties of an object node, or of the objects of a list node (``None`` for a leaf).
    Alternatives (``oneOf``) and the per-source ``allOf`` rules are not walked: a key with
    alternatives is one documented value."""
    node = resolve(node, schema)
    if "properties" in node:
        return node["properties"]
    if "items" in node and isinstance(node["items"], dict):
        return resolve(node["items"], schema).get("properties")
    return None


def child_prefix(path: str, node: dict, schema: dict) -> str:
    node = resolve(node, schema)
    return f"{path}[]" if "properties" not in node and "items" in node else path


def schema_paths(schema: dict) -> Iterator[tuple[str, dict, bool]]:
    """Every property path (``claims.thresholds.C3_gate_share``, ``models[].dtype``), its
    resolved node, and whether it is a leaf (an object with properties of its own is not)."""

    def walk(properties: dict, prefix: str) -> Iterator[tuple[str, dict, bool]]:
        for name, child in properties.items():
            path = f"{prefix}.{name}" if prefix else name
            inner = object_properties(child, schema)
            yield path, resolve(child, schema), inner is None
            if inner is not None:
                yield from walk(inner, child_prefix(path, child, schema))

    yield from walk(schema["properties"], "")


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ the README's rows
def cells(line: str) -> list[str]:
    return [cell.strip() for cell in CELL_SPLIT.split(line.strip().strip("|"))]


def section_path(heading: str, schema: dict) -> str:
    """``## models`` -> ``models[]``; ``## mediation (layer, ...)`` -> ``mediation``."""
    path = heading.split()[0]
    nodes = {p: node for p, node, _ in schema_paths(schema)}
    node = nodes.get(path)
    if node is not None and "properties" not in node and isinstance(node.get("items"), dict):
        return f"{path}[]"
    return path


def documented(readme: str, schema: dict) -> dict[str, tuple[int, str | None]]:
    """Documented key path -> (README line number, the YAML text of its stated default or None)."""
    found: dict[str, tuple[int, str | None]] = {}
    section = ""
    header: list[str] | None = None
    for number, line in enumerate(readme.splitlines(), start=1):
        if line.startswith("## "):
            section, header = section_path(line[3:].strip(), schema), None
            continue
        if not line.lstrip().startswith("|"):
            header = None
            continue
        row = cells(line)
        if header is None:
            header = [cell.lower() for cell in row]
            continue
        if "key" not in header or "default" not in header or set("".join(row)) <= set("-: "):
            continue  # another kind of table, or the header's separator row
        keys = BACKTICKED.findall(row[header.index("key")])
        defaults = BACKTICKED.findall(row[header.index("default")])
        for i, key in enumerate(keys):
            path = section if key == section else f"{section}.{key}"
            found[path] = (number, defaults[i] if i < len(defaults) else None)
    return found


def as_comparable(value: Any) -> str:
    """Equal values give equal strings; unlike ``==``, ``false`` differs from ``0`` and ``1``
    from ``1.0``."""
    return json.dumps(value, sort_keys=True)


def read_yaml(text: str) -> Any:
    """A stated default; text that is not YAML compares unequal to every default."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return {"not YAML": text}


# ------------------------------------------------------------------ tests
def test_every_schema_key_is_documented_with_the_schema_default() -> None:
    schema = load_schema()
    docs = documented(README_PATH.read_text(encoding="utf-8"), schema)
    problems = []
    for path, node, leaf in schema_paths(schema):
        default = json.dumps(node["default"]) if "default" in node else "none"
        if path not in docs:
            if leaf:
                problems.append(f"{path}: no row of config/README.md documents it (schema default: {default})")
            continue
        line, stated = docs[path]
        if "default" not in node:
            continue
        if stated is None:
            problems.append(f"{path} (config/README.md:{line}): the row states no default; the schema's is {default}")
        elif as_comparable(read_yaml(stated)) != as_comparable(node["default"]):
            problems.append(f"{path} (config/README.md:{line}): the README's default is `{stated}`, "
                            f"the schema's is {default}")
    assert not problems, "config/README.md disagrees with the schema:\n" + "\n".join(problems)


def test_documented_keys_exist_in_the_schema() -> None:
    schema = load_schema()
    paths = {path for path, _, _ in schema_paths(schema)}
    docs = documented(README_PATH.read_text(encoding="utf-8"), schema)
    unknown = [f"{path} (config/README.md:{line})" for path, (line, _) in sorted(docs.items()) if path not in paths]
    assert not unknown, "config/README.md documents keys the schema does not have:\n" + "\n".join(unknown)


def test_the_reader_finds_grouped_keys_and_their_defaults() -> None:
    """The README conventions above, on a small example (so a broken reader cannot pass vacuously)."""
    schema = {"properties": {
        "top": {"type": "integer", "default": 1},
        "group": {"type": "object", "properties": {
            "a": {"type": "string", "default": "x"},
            "inner": {"type": "object", "properties": {"b": {"type": "array", "default": [1, 2]}}}}},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
    }, "$defs": {"item": {"type": "object", "properties": {"c": {"type": "number", "default": 0.5}}}}}
    readme = textwrap.dedent("""\
        ## top

        | key | default | meaning |
        | --- | --- | --- |
        | `top` | `1` | t |

        ## group (a note)

        | key | default | meaning |
        | --- | --- | --- |
        | `a`, `inner.b` | `x`, `[1, 2]` (see `elsewhere`) | a \\| b |

        ## items

        | key | default | meaning |
        | --- | --- | --- |
        | `c` | `0.50` | c |
        """)
    assert [(path, leaf) for path, _, leaf in schema_paths(schema)] == [
        ("top", True), ("group", False), ("group.a", True), ("group.inner", False), ("group.inner.b", True),
        ("items", False), ("items[].c", True)]
    assert documented(readme, schema) == {
        "top": (5, "1"), "group.a": (11, "x"), "group.inner.b": (11, "[1, 2]"), "items[].c": (17, "0.50")}
