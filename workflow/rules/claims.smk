rule claims:
    """Claims table per model: per metric a behaviour-present row, C1-route, C1-origin, C2-route,
    C2-origin, C3 and C4-causal (held-out means of effects in units of the pair's TE, bootstrap
    CI, threshold from config, verdict), and the C4 probe row."""
    input:
        manifest="results/{model}/manifest.json",
        patches="results/{model}/claim_patches.csv",
        probe="results/{model}/probe.csv",
    output:
        csv="results/{model}/claims.csv",
    log:
        "logs/claims/{model}.log",
    benchmark:
        "benchmarks/claims/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        settings=reads("claims.thresholds", "effects", "probe.relative_level"),
    script:
        "../scripts/claims.py"
