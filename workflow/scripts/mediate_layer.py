from harmmed.shards import parse_shard
from harmmed.stages import mediate_layer, run_stage

run_stage(snakemake, lambda smk: mediate_layer(
    smk.config, smk.input.manifest, smk.input.inputs, smk.output.layer, smk.output.severed, smk.threads,
    shard=parse_shard(smk.wildcards.shard)))
