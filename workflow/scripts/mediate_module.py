from harmmed.stages import mediate_module, run_stage

run_stage(snakemake, lambda smk: mediate_module(
    smk.config, smk.input.manifest, smk.input.inputs, smk.output.module, smk.threads,
    shard=smk.wildcards.shard))
