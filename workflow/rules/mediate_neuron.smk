rule mediate_neuron:
    """Exact per-neuron NIE at the final layer (and neuron.extra_layers) and blocks of B adjacent
    neurons in every layer, for one shard of the pairs."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
    output:
        neuron="results/{model}/shards/neuron/{shard}.csv",
    log:
        "logs/mediate_neuron/{model}.{shard}.log",
    benchmark:
        "benchmarks/mediate_neuron/{model}.{shard}.tsv"
    priority: 55  # long jobs first, so the two CPU lanes stay busy
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("mediate_neuron"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads(
            "neuron.split",
            "neuron.max_pairs",
            "neuron.extra_layers",
            "neuron.block_size",
            "neuron.block_max_pairs",
            "engine",
            model=True,
        ),
    script:
        "../scripts/mediate_neuron.py"


rule neuron_ranking:
    """The discovery ranking of final-layer units over all pairs (after the shards are merged);
    a table computation, no model is run."""
    input:
        manifest="results/{model}/manifest.json",
        neuron="results/{model}/neuron.csv",
    output:
        ranking="results/{model}/neuron_ranking.csv",
    log:
        "logs/neuron_ranking/{model}.log",
    benchmark:
        "benchmarks/neuron_ranking/{model}.tsv"
    priority: 50
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/neuron_ranking.py"


rule neuron_sparsity:
    """The top-k vs random-k sparsity curve under the discovery ranking (for the figures)."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
        ranking="results/{model}/neuron_ranking.csv",
    output:
        sparsity="results/{model}/sparsity.csv",
    log:
        "logs/neuron_sparsity/{model}.log",
    benchmark:
        "benchmarks/neuron_sparsity/{model}.tsv"
    priority: 50
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("neuron_sparsity"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads("neuron", "gating.top_k", "engine", model=True),
    script:
        "../scripts/neuron_sparsity.py"


rule gating:
    """Held-out gating test of the top-k final-layer neurons: patched to benign values and
    mean-ablated, against random k neurons and the top-k attention output-projection inputs."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
        ranking="results/{model}/neuron_ranking.csv",
    output:
        gating="results/{model}/gating.csv",
        units="results/{model}/gating_units.json",
    log:
        "logs/gating/{model}.log",
    benchmark:
        "benchmarks/gating/{model}.tsv"
    priority: 45  # long jobs first, so the two CPU lanes stay busy
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("gating"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads("gating", "neuron.split", "neuron.max_pairs", "engine", model=True),
    script:
        "../scripts/gating.py"


rule neuron_figures:
    """Final-layer neuron NIE distribution, sparsity curve, block-vs-sum scatter, gating bars."""
    input:
        manifest="results/{model}/manifest.json",
        neuron="results/{model}/neuron.csv",
        ranking="results/{model}/neuron_ranking.csv",
        sparsity="results/{model}/sparsity.csv",
        gating="results/{model}/gating.csv",
    output:
        distribution=report(
            "figures/{model}/neuron_distribution.png", caption="../report/neuron_distribution.rst", category="{model}"
        ),
        sparsity=report("figures/{model}/sparsity.png", caption="../report/sparsity.rst", category="{model}"),
        block=report("figures/{model}/block_vs_sum.png", caption="../report/block_vs_sum.rst", category="{model}"),
        gating=report("figures/{model}/gating.png", caption="../report/gating.rst", category="{model}"),
        pdfs=expand("figures/{{model}}/{name}.pdf", name=NEURON_FIGURES),
    log:
        "logs/neuron_figures/{model}.log",
    benchmark:
        "benchmarks/neuron_figures/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        settings=reads("effects"),
    script:
        "../scripts/neuron_figures.py"
