from harmmed.stages import merge_shards, run_stage

run_stage(snakemake, lambda smk: merge_shards(list(smk.input.shards), smk.output[0]))
