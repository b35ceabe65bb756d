rule claims:
    """Claims table (C1, C2 measured; C3, C4 'not run' until their stages exist) as CSV and Markdown."""
    input:
        manifest="results/{model}/manifest.json",
        layer="results/{model}/layer.csv",
        module="results/{model}/module.csv",
        severed="results/{model}/severed.csv",
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
