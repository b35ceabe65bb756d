from harmmed.stages import download_model, run_stage

run_stage(snakemake, lambda smk: download_model(
    smk.config, smk.wildcards.model, "data/models", smk.output.manifest))
