rule mediate_claims:
    """Held-out interventions of the claim statistics: the depth profile (each band's attention
    and MLP outputs held at benign values, C1 and C2; also on the discovery pairs, to choose the
    origin band) and the C3 final-layer units, patched into the benign run (NIE) and held at
    benign values in the harmful run."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
        ranking="results/{model}/neuron_ranking.csv",
    output:
        patches="results/{model}/claim_patches.csv",
    log:
        "logs/mediate_claims/{model}.log",
    benchmark:
        "benchmarks/mediate_claims/{model}.tsv"
    priority: 40
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=model_job_mem_mb("mediate_claims"),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads(
            "claims.split",
            "claims.max_pairs",
            "claims.top_fraction",
            "claims.random_draws",
            "claims.seed",
            "mediation.split",
            "mediation.module_max_pairs",
            "mediation.module_positions",
            "engine",
            model=True,
        ),
    script:
        "../scripts/mediate_claims.py"
