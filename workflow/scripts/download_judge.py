from harmmed.stages import download_judge, run_stage

run_stage(snakemake, lambda smk: download_judge(smk.config, "data/models", smk.output.manifest))
