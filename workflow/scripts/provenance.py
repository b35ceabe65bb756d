from harmmed.stages import provenance, run_stage

run_stage(snakemake, lambda smk: provenance(
    smk.config, smk.input.results[0], smk.input.pairs, list(smk.params.datasets), list(smk.input.results),
    smk.params.repo, smk.params.threads, smk.output.provenance))
