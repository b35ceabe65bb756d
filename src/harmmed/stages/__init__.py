"""One function per workflow stage: read inputs, call the library, write outputs.

This is the orchestrator on top of the library: every Snakemake script calls exactly one
function here, and no module below imports this package. Stages take the config, the model
manifest (a path, or an already-read mapping) and named input/output paths, so every stage can
also be run (and tested) from Python without Snakemake. The stages are grouped by what they
touch: ``prepare`` (making a model and its inputs), ``model_runs`` (running the model over
pairs), ``tables`` (figures and claims from result tables, no torch) and ``verification``
(provenance, verification, bundles).

A stage's module is imported when the stage is first asked for, so a figure job never imports
torch or the model code.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "run_stage": "base",
    **dict.fromkeys(["download_judge", "download_model", "fetch_public_datasets", "finetune_model",
                     "prepare_prompts"], "prepare"),
    **dict.fromkeys(["bundle", "figures_from_bundle", "provenance", "verify"], "verification"),
    **dict.fromkeys(["gating", "generate_and_judge", "mediate_claims", "mediate_heatmap", "mediate_layer",
                     "mediate_module", "mediate_neuron", "mediate_token", "merge_shards", "neuron_sparsity",
                     "recovery", "run_probe", "screen_units"], "model_runs"),
    **dict.fromkeys(["calibration", "claims", "cross_model_figure", "figures", "generation_figure", "merge_shards",
                     "neuron_figures", "neuron_ranking", "probe_figure", "recovery_figure", "screen_figures", "summary",
                     "token_figures"], "tables"),
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
