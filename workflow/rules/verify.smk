# Reviewer verification: provenance of every result, an independent recomputation of sampled
# rows (make verify), and a checksummed results bundle (make bundle).


rule provenance:
    """provenance.json: git commit and dirty flag, resolved config and its hash, package versions,
    platform, device, dtype, threads, and the sha256 of the weights, the datasets, every result
    file and the seeds."""
    input:
        results=result_files,
        pairs=pairs_source,
    output:
        provenance="results/{model}/provenance.json",
    log:
        "logs/provenance/{model}.log",
    benchmark:
        "benchmarks/provenance/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        # the dataset lock is a param, not an input: a first fetch writes it (trust on first use)
        datasets=dataset_files,
        repo=workflow.basedir,
        threads=getattr(workflow.get_rule("mediate_layer").resources.get("_cores"), "value", None),  # model stages' threads
        config_hash=lambda wildcards: config_digest(config),  # a config change rewrites the record
    script:
        "../scripts/provenance.py"


rule verify:
    """Recompute verify.n_rows sampled rows per mediation table with the reference
    implementation, check the weights' and files' sha256 against the provenance, re-encode
    inputs.jsonl and recompute claims.csv; exits non-zero on any FAIL."""
    input:
        manifest="results/{model}/manifest.json",
        provenance="results/{model}/provenance.json",
        results=result_files,
    output:
        csv="results/{model}/verification.csv",
        md="figures/{model}/verification.md",
    log:
        "logs/verify/{model}.log",
    benchmark:
        "benchmarks/verify/{model}.tsv"
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("verify"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads("verify", model=True, scored=False),
    script:
        "../scripts/verify.py"


rule bundle:
    """results-<model>-<commit>.tar.gz and its .sha256: the tables, provenance, claims and the
    run's calibration.csv (the marks of claims.md)."""
    input:
        provenance="results/{model}/provenance.json",
        results=result_files,
        calibration="results/calibration.csv",
    output:
        bundle=f"results-{{model}}-{COMMIT}.tar.gz",
        sha256=f"results-{{model}}-{COMMIT}.tar.gz.sha256",
    log:
        "logs/bundle/{model}.log",
    benchmark:
        "benchmarks/bundle/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/bundle.py"


rule bundle_all:
    """Every configured model's bundle (make bundle)."""
    input:
        expand(f"results-{{model}}-{COMMIT}.tar.gz", model=MODELS),


rule verify_all:
    """Every configured model's verification (make verify)."""
    input:
        expand("results/{model}/verification.csv", model=MODELS),
