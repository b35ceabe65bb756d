from harmmed.stages import claims, run_stage

run_stage(snakemake, lambda smk: claims(
    smk.config, smk.input.manifest, smk.input.layer, smk.input.module, smk.input.severed,
    smk.input.sparsity, smk.input.gating, smk.input.ranking, smk.input.probe, smk.output.csv, smk.output.md))
