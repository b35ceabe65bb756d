rule merge_shards:
    """One table per sharded model stage (shards: N in the config): the shards' rows in shard
    order, byte-identical to an unsharded run. Selections over all pairs read the merged table."""
    input:
        shards=shard_parts,
    output:
        "results/{model}/{table}.{ext}",
    log:
        "logs/merge_shards/{model}.{table}.{ext}.log",
    benchmark:
        "benchmarks/merge_shards/{model}.{table}.{ext}.tsv"
    wildcard_constraints:
        table="|".join(SHARDED_TABLES),
        ext="csv|json",
    localrule: True
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/merge_shards.py"
