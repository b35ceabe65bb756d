from pathlib import Path

from harmmed.stages import neuron_figures, run_stage

run_stage(snakemake, lambda smk: neuron_figures(
    smk.config, smk.input.manifest, smk.input.neuron, smk.input.ranking, smk.input.sparsity,
    smk.input.gating, Path(smk.output.distribution).parent))
