from harmmed.stages import mediate_layer, run_stage

run_stage(snakemake, lambda smk: mediate_layer(
    smk.config, smk.input.manifest, smk.input.inputs, smk.output.layer, smk.output.severed, smk.threads,
    shard=smk.wildcards.shard))
