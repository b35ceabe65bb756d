from harmmed.stages import claims, run_stage

run_stage(snakemake, lambda smk: claims(
    smk.config, smk.input.manifest, smk.input.patches, smk.input.probe, smk.output.csv))
