from harmmed.stages import neuron_ranking, run_stage

run_stage(snakemake, lambda smk: neuron_ranking(smk.input.manifest, smk.input.neuron, smk.output.ranking))
