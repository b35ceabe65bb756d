from harmmed.stages import generation_figure, run_stage

run_stage(snakemake, lambda smk: generation_figure(smk.input.manifest, smk.input.rates, smk.output.png))
