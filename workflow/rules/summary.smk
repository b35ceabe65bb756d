rule summary:
    """Every model's claims rows with each statistic's calibration mark: results/summary.csv (no
    commit or time, so equal runs write equal bytes) and figures/summary.md (statistics x models,
    the commit and time in its header)."""
    input:
        claims=results("claims.csv"),
        calibration="results/calibration.csv",
        provenance=results("provenance.json"),  # the commit the header names
    output:
        csv="results/summary.csv",
        md=report("figures/summary.md", caption="../report/summary.rst", category="cross-model"),
    log:
        "logs/summary/summary.log",
    benchmark:
        "benchmarks/summary/summary.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        settings=reads("calibration.metric"),
    script:
        "../scripts/summary.py"
