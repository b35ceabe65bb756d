rule fetch_public_datasets:
    """Download the opted-in public prompt sets at pinned URLs, verify them against the lock file
    and sample unpaired harmful/benign pairs from them."""
    output:
        pairs="data/raw/unpaired_pairs.csv",
    log:
        "logs/fetch_public_datasets/all.log",
    benchmark:
        "benchmarks/fetch_public_datasets/all.tsv"
    conda:
        "../../envs/prepare.yaml"
    params:
        settings=reads(
            "prompts.public.harmful",
            "prompts.public.benign",
            "prompts.public.n_pairs",
            "prompts.public.seed",
            "prompts.public.lock_file",
            "public_pins",
        ),
    script:
        "../scripts/fetch_public_datasets.py"


rule prepare_prompts:
    """Apply the model's chat template, drop pairs that are not token-aligned (counted in the
    log and listed in dropped_pairs.csv) and make the seeded discovery/held-out split."""
    input:
        manifest="results/{model}/manifest.json",
        pairs=pairs_source,
    output:
        inputs="results/{model}/inputs.jsonl",
        dropped="results/{model}/dropped_pairs.csv",
    log:
        "logs/prepare_prompts/{model}.log",
    benchmark:
        "benchmarks/prepare_prompts/{model}.tsv"
    conda:
        "../../envs/prepare.yaml"
    params:
        settings=reads(
            "prompts.mode",
            "prompts.categories",
            "prompts.split_seed",
            "prompts.discovery_fraction",
            "prompts.public.enabled",
            *(["noise"] if config["prompts"]["mode"] == "noise" else []),
        ),
    script:
        "../scripts/prepare_prompts.py"
