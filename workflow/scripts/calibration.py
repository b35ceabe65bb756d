from harmmed.stages import calibration, run_stage

run_stage(snakemake, lambda smk: calibration(
    smk.config, list(smk.input.claims), smk.output.csv, smk.output.png, list(smk.output.md)))
