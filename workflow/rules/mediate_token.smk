rule mediate_token:
    """NIE of the embedding output at each prompt position, labelled by the position's role
    (template, request before/after the differing span, span, post-instruction)."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
        pairs=pairs_source,
    output:
        token="results/{model}/shards/token/{shard}.csv",
    log:
        "logs/mediate_token/{model}.{shard}.log",
    benchmark:
        "benchmarks/mediate_token/{model}.{shard}.tsv"
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("mediate_token"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads("token", "engine", model=True),
    script:
        "../scripts/mediate_token.py"


rule token_figures:
    """Categories x token roles heatmap of the mean embedding NIE, one figure per metric."""
    input:
        manifest="results/{model}/manifest.json",
        token="results/{model}/token.csv",
        inputs="results/{model}/inputs.jsonl",
    output:
        harm=report(
            "figures/{model}/token_heatmap_harm.png",
            caption="../report/token.rst",
            category="{model}",
            subcategory="token_heatmap_harm",
        ),
        refusal=report(
            "figures/{model}/token_heatmap_refusal.png",
            caption="../report/token.rst",
            category="{model}",
            subcategory="token_heatmap_refusal",
        ),
        pdfs=expand("figures/{{model}}/token_heatmap_{metric}.pdf", metric=METRICS),
    log:
        "logs/token_figures/{model}.log",
    benchmark:
        "benchmarks/token_figures/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    script:
        "../scripts/token_figures.py"
