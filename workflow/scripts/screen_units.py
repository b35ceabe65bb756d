from harmmed.stages import run_stage, screen_units

run_stage(snakemake, lambda smk: screen_units(
    smk.config, smk.input.manifest, smk.input.inputs, dict(smk.output.items()), smk.threads))
