"""The wings' promises that the import contracts cannot see: the table and figure code imports
without torch, and the stages package loads a stage's module only when the stage is asked for."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BLOCK = textwrap.dedent("""
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: this job must run without it")
            return None

    sys.meta_path.insert(0, Blocked())
""")


def run_without(blocked: tuple[str, ...], code: str) -> subprocess.CompletedProcess:
    source = f"BLOCKED = {blocked!r}\n" + BLOCK + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True)


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return run_without(("torch", "transformers"), code)


def test_the_block_is_real() -> None:
    done = run_without_torch("import torch")
    assert done.returncode != 0 and "blocked" in done.stderr


@pytest.mark.parametrize("wing", ["io", "datasets", "stats", "figures"])
def test_torch_free_wings_import_without_torch(wing: str) -> None:
    done = run_without_torch(f"""
        import importlib, pkgutil
        import harmmed.{wing} as wing
        names = [m.name for m in pkgutil.iter_modules(wing.__path__)]
        assert sorted(names) == sorted(wing.__all__), (names, wing.__all__)
        for name in names:
            importlib.import_module(f"harmmed.{wing}." + name)
        print(len(names))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= 2


def test_table_stages_run_without_torch() -> None:
    done = run_without_torch("""
        from harmmed.stages import calibration, claims, figures, recovery_figure, run_stage
        import sys
        assert "harmmed.stages.model_runs" not in sys.modules
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_stages_of_the_analysis_environment_import_without_torch() -> None:
    """merge_shards, claims, calibration, the summary and the figures run in envs/analysis.yaml (no
    torch), and so do make compare and make docs-results."""
    done = run_without_torch("""
        from harmmed.stages import calibration, claims, figures, merge_shards, provenance, screen_figures, summary
        import harmmed.review.compare, harmmed.review.docs_results
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_verification_imports_without_matplotlib_or_torch() -> None:
    """verify runs in envs/mediate.yaml (no matplotlib), and imports torch only to recompute rows."""
    done = run_without(("torch", "transformers", "matplotlib"), """
        from harmmed.stages import claims, provenance, verify
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_model_stage_needs_torch() -> None:
    done = run_without_torch("from harmmed.stages import mediate_layer")
    assert done.returncode != 0 and "blocked" in done.stderr


def test_every_wing_lists_its_modules() -> None:
    import importlib
    import pkgutil

    for wing in ("io", "datasets", "models", "patching", "analyses", "stats", "figures", "training", "review"):
        package = importlib.import_module(f"harmmed.{wing}")
        assert sorted(m.name for m in pkgutil.iter_modules(package.__path__)) == sorted(package.__all__), wing


def test_unknown_stage_is_an_attribute_error() -> None:
    import harmmed.stages as stages

    with pytest.raises(AttributeError, match="no attribute 'mediate_everything'"):
        stages.mediate_everything  # noqa: B018
