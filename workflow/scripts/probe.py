from harmmed.stages import run_probe, run_stage

run_stage(snakemake, lambda smk: run_probe(
    smk.config, smk.input.manifest, smk.input.inputs, smk.output.probe, smk.threads))
