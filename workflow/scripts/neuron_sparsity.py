from harmmed.stages import neuron_sparsity, run_stage

run_stage(snakemake, lambda smk: neuron_sparsity(
    smk.config, smk.input.manifest, smk.input.inputs, smk.input.ranking, smk.output.sparsity, smk.threads))
