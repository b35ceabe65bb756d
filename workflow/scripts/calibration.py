from harmmed.stages import calibration, run_stage

run_stage(snakemake, lambda smk: calibration(
    smk.config, list(smk.input.claims), {"csv": smk.output.csv, "png": smk.output.png, "md": list(smk.output.md)},
    list(smk.input.manifests), list(smk.input.recovery)))
