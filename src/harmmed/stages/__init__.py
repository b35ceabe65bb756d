"""One function per workflow stage: read inputs, call the library, write outputs.

This is the orchestrator on top of the library: every Snakemake script calls exactly one
function here, and no analysis module imports this package. Stages take the config, the model
manifest (a path, or an already-read mapping) and named input/output paths, so every stage can
also be run (and tested) from Python without Snakemake. The stages are grouped by what they
touch: ``models`` (making a model and its inputs), ``sweeps`` (running the model over pairs),
``tables`` (figures and claims from result tables, no torch) and ``review`` (provenance,
verification, bundles).
"""

from .base import run_stage
from .models import download_judge, download_model, fetch_public_datasets, finetune_model, prepare_prompts
from .review import bundle, figures_from_bundle, provenance, verify
from .sweeps import (gating, generate_and_judge, mediate_claims, mediate_heatmap, mediate_layer, mediate_module,
                     mediate_neuron, mediate_token, merge_shards, neuron_sparsity, recovery, run_probe, screen_units)
from .tables import (calibration, claims, cross_model_figure, figures, generation_figure, neuron_figures, probe_figure,
                     recovery_figure, screen_figures, token_figures)

__all__ = [
    "bundle", "calibration", "claims", "cross_model_figure", "download_judge", "download_model",
    "fetch_public_datasets", "figures", "figures_from_bundle", "finetune_model", "gating", "generate_and_judge",
    "generation_figure", "mediate_claims", "mediate_heatmap", "mediate_layer", "mediate_module", "mediate_neuron",
    "mediate_token", "merge_shards", "neuron_figures", "neuron_sparsity", "prepare_prompts", "probe_figure",
    "provenance", "recovery", "recovery_figure", "run_probe", "run_stage", "screen_figures", "screen_units",
    "token_figures", "verify",
]
