from harmmed.stages import recovery_figure, run_stage

run_stage(snakemake, lambda smk: recovery_figure(list(smk.input.recovery), smk.output.png))
