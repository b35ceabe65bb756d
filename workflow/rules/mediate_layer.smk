rule mediate_layer:
    """TE, NIE and NDE of the residual stream at every layer (positions all/post/last), and
    severed paths: the residual NIE with every later MLP (or attention) output frozen at its
    benign value."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
    output:
        layer="results/{model}/shards/layer/{shard}.csv",
        severed="results/{model}/shards/severed/{shard}.csv",
    log:
        "logs/mediate_layer/{model}.{shard}.log",
    benchmark:
        "benchmarks/mediate_layer/{model}.{shard}.tsv"
    priority: 60  # the longest job first, so the two CPU lanes stay busy
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("mediate_layer"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads(
            "mediation.split",
            "mediation.max_pairs",
            "mediation.layer_positions",
            "mediation.severed_positions",
            "engine",
            model=True,
        ),
    script:
        "../scripts/mediate_layer.py"
