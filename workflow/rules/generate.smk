# Analysis 6: greedy generation with and without the gating intervention, judged.
# results/judge/ holds the model judge's manifest; download_judge, not download_model, makes it.
ruleorder: download_judge > download_model


rule download_judge:
    """Fetch the model judge (generation.judge.model, e.g. Llama Guard) once, verified, as
    safetensors, and record which bytes it is. Used only when generation.judge.kind is model."""
    output:
        manifest="results/judge/manifest.json",
    log:
        "logs/download_judge/judge.log",
    benchmark:
        "benchmarks/download_judge/judge.tsv"
    conda:
        "../../envs/prepare.yaml"
    threads: 1
    params:
        settings=reads("generation.judge"),
    script:
        "../scripts/download_judge.py"


rule generate_and_judge:
    """Greedy generation on the held-out pairs' harmful and benign prompts under no
    intervention, the gating units held at their benign mean or at zero, and random units held
    at their benign mean; every response judged; compliance rates with Wilson CIs."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
        gating="results/{model}/gating_units.json",
        judge=judge_manifest,
    output:
        generations="results/{model}/generations.jsonl",
        rates="results/{model}/generation_rates.csv",
    log:
        "logs/generate_and_judge/{model}.log",
    benchmark:
        "benchmarks/generate_and_judge/{model}.tsv"
    priority: 40  # long jobs first, so the two CPU lanes stay busy
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("generate_and_judge"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads("generation", "effects.ci", "engine", model=True, scored=False),
    script:
        "../scripts/generate_and_judge.py"


rule generation_figure:
    """Harmful-response rate and benign compliance rate by condition, with Wilson CIs (PNG+PDF)."""
    input:
        manifest="results/{model}/manifest.json",
        rates="results/{model}/generation_rates.csv",
    output:
        png=report("figures/{model}/generation_rates.png", caption="../report/generation.rst", category="{model}"),
        pdf="figures/{model}/generation_rates.pdf",
    log:
        "logs/generation_figure/{model}.log",
    benchmark:
        "benchmarks/generation_figure/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    script:
        "../scripts/generation_figure.py"
