rule screen_units:
    """Attribution estimates of every MLP unit at every layer (one backward pass per pair and
    metric), verified exactly at every layer (top-K, a random sample, the whole final layer),
    and the screen's ranking tested on held-out pairs (sparsity curve, adjacency test)."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
    output:
        screen="results/{model}/screen.csv",
        screen_report="results/{model}/screen_report.csv",
        screen_heldout="results/{model}/screen_heldout.csv",
    log:
        "logs/screen_units/{model}.log",
    benchmark:
        "benchmarks/screen_units/{model}.tsv"
    priority: 50  # long jobs first, so the two CPU lanes stay busy
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("screen_units"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads("screen", "effects.min_abs_te", "engine", model=True, scored=False),
    script:
        "../scripts/screen_units.py"


rule screen_figures:
    """Estimate vs exact by depth band, the layer x unit-rank heatmap, held-out sparsity and
    adjacency at every layer."""
    input:
        manifest="results/{model}/manifest.json",
        screen="results/{model}/screen.csv",
        screen_report="results/{model}/screen_report.csv",
        screen_heldout="results/{model}/screen_heldout.csv",
    output:
        scatter=report("figures/{model}/screen_scatter.png", caption="../report/screen_scatter.rst", category="{model}"),
        heatmap=report("figures/{model}/screen_heatmap.png", caption="../report/screen_heatmap.rst", category="{model}"),
        sparsity=report(
            "figures/{model}/screen_sparsity.png", caption="../report/screen_sparsity.rst", category="{model}"
        ),
        adjacency=report(
            "figures/{model}/screen_adjacency.png", caption="../report/screen_adjacency.rst", category="{model}"
        ),
        pdfs=expand("figures/{{model}}/{name}.pdf", name=SCREEN_FIGURES),
    log:
        "logs/screen_figures/{model}.log",
    benchmark:
        "benchmarks/screen_figures/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        settings=reads("screen.held_out"),
    script:
        "../scripts/screen_figures.py"
