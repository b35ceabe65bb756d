"""The user-facing documentation: the report's description covers every rule, and the pages say
what the software does, not how it came to be."""

from __future__ import annotations

import io
import re
from pathlib import Path

import docutils.core
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_RST = ROOT / "workflow" / "report" / "workflow.rst"

RULE = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:", re.MULTILINE)

# Words of a work log rather than of a manual. Each entry: what it flags, and the pattern
# (case-insensitive). Rewrite a flagged sentence in the present tense, or delete it when it is
# only history.
PROCESS_WORDS = [
    ("a work session", r"\bsessions?\b"),
    ("a machine named by when it was used", r"\blater machines?\b"),
    ("a machine's load", r"\bload averages?\b"),
    ("who did the work", r"\bengineers?\b"),
    ("a deadline", r"\bdeadlines?\b"),
    ("an issue number", r"\bissues?\s*#?\d+\b|(?<![\w&#/])#\d+\b"),
    ("a git branch", r"\bbranch(es)?\b"),
    ("a date", r"\b(19|20)\d\d-[01]\d\b"),
    ("a default that changed", r"\b(previous|earlier|older|former|old) defaults?\b"),
    ("a change over time", r"\bnow\b|\bsince replaced\b"),
]


def documentation_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "config" / "README.md",
            *sorted((ROOT / "workflow" / "report").glob("*.rst"))]


def workflow_rules() -> set[str]:
    sources = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    return {name for source in sources for name in RULE.findall(source.read_text(encoding="utf-8"))}


def test_the_report_describes_every_rule() -> None:
    rules = workflow_rules()
    assert {"all", "prepare_prompts", "mediate_layer", "claims", "calibration"} <= rules  # the reader works
    described = set(re.findall(r"``(\w+)``", WORKFLOW_RST.read_text(encoding="utf-8")))
    missing = sorted(rules - described)
    assert not missing, f"{WORKFLOW_RST.relative_to(ROOT)} does not describe these rules: {', '.join(missing)}"


@pytest.mark.parametrize("path", sorted((ROOT / "workflow" / "report").glob("*.rst")), ids=lambda p: p.name)
def test_report_text_is_valid_restructuredtext(path: Path) -> None:
    messages = io.StringIO()
    docutils.core.publish_doctree(path.read_text(encoding="utf-8"), source_path=str(path),
                                  settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": messages})
    assert not messages.getvalue(), messages.getvalue()


def test_documentation_has_no_process_words() -> None:
    found = []
    for path in documentation_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for what, pattern in PROCESS_WORDS:
                match = re.search(pattern, line, re.IGNORECASE)
                if match:
                    found.append(f"{path.relative_to(ROOT)}:{number}: {what} ({match.group(0)!r}): {line.strip()}")
    assert not found, "describe what the software does, not its history:\n" + "\n".join(found)


@pytest.mark.parametrize("line", ["see issue 24", "fixed in #24", "our session", "on the later machine",
                                  "load average 1.4", "the engineer", "deadline", "on branch main",
                                  "on 2026-05-01", "the previous default", "is now 12"])
def test_the_process_words_catch(line: str) -> None:
    assert any(re.search(pattern, line, re.IGNORECASE) for _, pattern in PROCESS_WORDS)


@pytest.mark.parametrize("line", ["see [Calibration](claims-and-calibration.md#calibration-can-each-statistic-fail)",
                                  "`data/prompts/minimal_pairs.csv`", "a 40-hex commit", "layers 3-6", "arXiv:2604.11663",
                                  "knowledge", "`known`", "sessionless"])
def test_the_process_words_spare(line: str) -> None:
    assert not any(re.search(pattern, line, re.IGNORECASE) for _, pattern in PROCESS_WORDS)
