from harmmed.stages import claims, run_stage

run_stage(snakemake, lambda smk: claims(smk.config, dict(smk.input.items()), dict(smk.output.items())))
