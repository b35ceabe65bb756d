rule claims:
    """Claims table per model: per metric a behaviour-present row and C1-C3 (held-out means of
    effects in units of the pair's TE, bootstrap CI, threshold from config, verdict), and C4."""
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
        settings=reads("claims.thresholds", "effects", "probe.accuracy_level"),
    script:
        "../scripts/claims.py"
