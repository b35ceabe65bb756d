from harmmed.stages import mediate_token, run_stage

run_stage(snakemake, lambda smk: mediate_token(
    smk.config, smk.input.manifest, smk.input.inputs, smk.output.token, smk.threads, pairs_path=smk.input.pairs,
    shard=smk.wildcards.shard))
