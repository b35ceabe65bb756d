from pathlib import Path

from harmmed.stages import neuron_figures, run_stage

run_stage(snakemake, lambda smk: neuron_figures(
    smk.config, dict(smk.input.items()), Path(smk.output.distribution).parent))
