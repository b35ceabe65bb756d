from harmmed.stages import prepare_prompts, run_stage

run_stage(snakemake, lambda smk: prepare_prompts(
    smk.config, smk.input.manifest, smk.input.pairs, smk.output.inputs, smk.output.dropped))
