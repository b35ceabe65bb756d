rule mediate_heatmap:
    """Layer x position NIE of the residual stream, MLP and attention outputs on the first
    heatmap pairs (Meng et al.'s three panels)."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
    output:
        heatmap="results/{model}/shards/heatmap/{shard}.csv",
        tokens="results/{model}/shards/heatmap_tokens/{shard}.json",
    log:
        "logs/mediate_heatmap/{model}.{shard}.log",
    benchmark:
        "benchmarks/mediate_heatmap/{model}.{shard}.tsv"
    priority: 50  # long jobs first, so the two CPU lanes stay busy
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("mediate_heatmap"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads(
            "mediation.split", "mediation.max_pairs", "mediation.heatmap", "prompts.mode", "engine", model=True
        ),
    script:
        "../scripts/mediate_heatmap.py"
