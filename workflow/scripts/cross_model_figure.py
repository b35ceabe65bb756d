from harmmed.stages import cross_model_figure, run_stage

run_stage(snakemake, lambda smk: cross_model_figure(
    smk.config, list(smk.input.manifests), list(smk.input.layers), smk.output.png))
