from harmmed.stages import run_stage, summary

run_stage(snakemake, lambda smk: summary(
    smk.config, list(smk.input.claims), smk.input.calibration, list(smk.input.provenance), dict(smk.output.items())))
