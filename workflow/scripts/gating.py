from harmmed.stages import gating, run_stage

run_stage(snakemake, lambda smk: gating(
    smk.config, smk.input.manifest, smk.input.inputs, smk.input.ranking,
    smk.output.gating, smk.output.units, smk.threads))
