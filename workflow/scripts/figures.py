from pathlib import Path

from harmmed.stages import figures, run_stage

run_stage(snakemake, lambda smk: figures(
    smk.config, smk.input.manifest, smk.input.layer, smk.input.module, smk.input.severed,
    smk.input.heatmap, smk.input.inputs, smk.input.tokens, Path(smk.output.layer_curves).parent))
