rule mediate_neuron:
    """Exact per-neuron NIE at the final layer (and neuron.extra_layers), blocks of B adjacent
    neurons in every layer, the discovery ranking and the top-k vs random-k sparsity curve."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
    output:
        neuron="results/{model}/neuron.csv",
        ranking="results/{model}/neuron_ranking.csv",
        sparsity="results/{model}/sparsity.csv",
    priority: 55  # long jobs first, so the two CPU lanes stay busy
    log:
        "logs/mediate_neuron/{model}.log",
    benchmark:
        "benchmarks/mediate_neuron/{model}.tsv"
    conda:
        "../../envs/mediate.yaml"
    threads: 1
    resources:
        mem_mb=6000,
    script:
        "../scripts/mediate_neuron.py"


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
    priority: 45  # long jobs first, so the two CPU lanes stay busy
    log:
        "logs/gating/{model}.log",
    benchmark:
        "benchmarks/gating/{model}.tsv"
    conda:
        "../../envs/mediate.yaml"
    threads: 1
    resources:
        mem_mb=6000,
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
        distribution=report("figures/{model}/neuron_distribution.png", caption="../report/neuron_distribution.rst",
                            category="{model}"),
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
    script:
        "../scripts/neuron_figures.py"
