rule claims:
    """Claims table C1-C4 (statistic, bootstrap CI, threshold from config, verdict) as CSV and Markdown."""
    input:
        manifest="results/{model}/manifest.json",
        layer="results/{model}/layer.csv",
        module="results/{model}/module.csv",
        severed="results/{model}/severed.csv",
        sparsity="results/{model}/sparsity.csv",
        gating="results/{model}/gating.csv",
        ranking="results/{model}/neuron_ranking.csv",
        probe="results/{model}/probe.csv",
    output:
        csv="results/{model}/claims.csv",
        md=report("figures/{model}/claims.md", caption="../report/claims.rst", category="{model}"),
    log:
        "logs/claims/{model}.log",
    benchmark:
        "benchmarks/claims/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/claims.py"
