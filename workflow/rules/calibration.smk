rule calibration:
    """Every model's claims against the verdicts its config entry expects (planted models):
    results/calibration.csv, the statistics x models grid, and each model's claims.md with
    every statistic marked calibrated or not."""
    input:
        claims=expand("results/{model}/claims.csv", model=MODELS),
        manifests=expand("results/{model}/manifest.json", model=MODELS),
        recovery=expand("results/{model}/recovery.csv", model=PLANTED),  # is the ground truth real?
    output:
        csv="results/calibration.csv",
        png=report("figures/calibration.png", caption="../report/calibration.rst", category="calibration"),
        pdf="figures/calibration.pdf",
        md=[report(f"figures/{model}/claims.md", caption="../report/claims.rst", category=model) for model in MODELS],
    log:
        "logs/calibration/calibration.log",
    benchmark:
        "benchmarks/calibration/calibration.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        settings=reads("calibration.metric", "expected_verdicts"),
    script:
        "../scripts/calibration.py"
