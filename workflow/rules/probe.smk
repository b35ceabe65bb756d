rule probe:
    """Cross-validated logistic-regression probe per layer on the residual at the last prompt
    position, harmful vs benign, with a pair-shuffled label control (claim C4)."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
    output:
        probe="results/{model}/probe.csv",
    log:
        "logs/probe/{model}.log",
    benchmark:
        "benchmarks/probe/{model}.tsv"
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("probe"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads(
            "probe.split",
            "probe.max_pairs",
            "probe.folds",
            "probe.C",
            "probe.seed",
            "engine",
            model=True,
            scored=False,
        ),
    script:
        "../scripts/probe.py"


rule probe_figure:
    """Probe accuracy against layer, real vs shuffled labels, with the accuracy level."""
    input:
        manifest="results/{model}/manifest.json",
        probe="results/{model}/probe.csv",
    output:
        png=report(
            "figures/{model}/probe_accuracy.png",
            caption="../report/probe.rst",
            category="{model}",
            subcategory="probe_accuracy",
        ),
        pdf="figures/{model}/probe_accuracy.pdf",
    log:
        "logs/probe_figure/{model}.log",
    benchmark:
        "benchmarks/probe_figure/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    params:
        settings=reads("probe.relative_level"),
    script:
        "../scripts/probe_figure.py"
