rule mediate_module:
    """NIE of attention and MLP outputs at every layer, single layers and windows."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
    output:
        module="results/{model}/shards/module/{shard}.csv",
    log:
        "logs/mediate_module/{model}.{shard}.log",
    benchmark:
        "benchmarks/mediate_module/{model}.{shard}.tsv"
    priority: 35  # long jobs first, so the two CPU lanes stay busy
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("mediate_module"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads(
            "mediation.split",
            "mediation.module_max_pairs",
            "mediation.module_positions",
            "mediation.windows",
            "engine",
            model=True,
        ),
    script:
        "../scripts/mediate_module.py"
