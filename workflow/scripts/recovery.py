from harmmed.stages import recovery, run_stage

run_stage(snakemake, lambda smk: recovery(
    smk.config, smk.input.manifest, smk.input.inputs, smk.input.ranking, smk.output.recovery, smk.threads))
