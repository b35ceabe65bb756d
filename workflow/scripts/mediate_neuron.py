from harmmed.stages import mediate_neuron, run_stage

run_stage(snakemake, lambda smk: mediate_neuron(
    smk.config, smk.input.manifest, smk.input.inputs, smk.output.neuron, smk.threads,
    shard=smk.wildcards.shard))
