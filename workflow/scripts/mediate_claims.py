from harmmed.stages import mediate_claims, run_stage

run_stage(snakemake, lambda smk: mediate_claims(
    smk.config, smk.input.manifest, smk.input.inputs, smk.input.ranking,
    smk.output.patches, smk.threads))
