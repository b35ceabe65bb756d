rule recovery:
    """Recovery statistics on held-out pairs: a plant against its own ground truth (targets and
    verdicts), a model without a plant against every configured plant (the null)."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
        ranking="results/{model}/neuron_ranking.csv",
    output:
        recovery="results/{model}/recovery.csv",
    log:
        "logs/recovery/{model}.log",
    benchmark:
        "benchmarks/recovery/{model}.tsv"
    priority: 30
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("recovery"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads("recovery", "gating.metric", "effects", "engine", "plants", model=True, scored=False),
    script:
        "../scripts/recovery.py"


rule recovery_figure:
    """Every plant's recovery statistics side by side, with the models without that plant."""
    input:
        recovery=per_model("results/{model}/recovery.csv", "recovery"),
    output:
        png=report("figures/recovery.png", caption="../report/recovery.rst", category="cross-model"),
        pdf="figures/recovery.pdf",
    log:
        "logs/recovery_figure/all.log",
    benchmark:
        "benchmarks/recovery_figure/all.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/recovery_figure.py"
