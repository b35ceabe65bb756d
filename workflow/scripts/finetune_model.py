from harmmed.stages import finetune_model, run_stage

run_stage(snakemake, lambda smk: finetune_model(
    smk.config, smk.wildcards.model, smk.input.base, "data/models", smk.output.manifest, smk.threads))
