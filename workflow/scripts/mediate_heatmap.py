from harmmed.stages import mediate_heatmap, run_stage

run_stage(snakemake, lambda smk: mediate_heatmap(
    smk.config, smk.input.manifest, smk.input.inputs, smk.output.heatmap, smk.output.tokens, smk.threads,
    shard=smk.wildcards.shard))
