from harmmed.stages import bundle, run_stage

run_stage(snakemake, lambda smk: bundle(smk.input.provenance, smk.input.calibration, smk.output.bundle))
