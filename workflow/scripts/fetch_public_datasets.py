from harmmed.stages import fetch_public_datasets, run_stage

run_stage(snakemake, lambda smk: fetch_public_datasets(smk.config, smk.params.raw_dir, smk.output.pairs))
