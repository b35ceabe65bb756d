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
    params:  # every key the stage reads, so changing one reruns it (url_overrides only say where the pinned bytes are)
        harmful=PUBLIC["harmful"],
        benign=PUBLIC["benign"],
        n_pairs=PUBLIC["n_pairs"],
        seed=PUBLIC["seed"],
        lock_file=PUBLIC["lock_file"],
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
    params:  # every config key the stage reads
        mode=config["prompts"]["mode"],
        split_seed=config["prompts"]["split_seed"],
        discovery_fraction=config["prompts"]["discovery_fraction"],
        request_span=PUBLIC["enabled"],
        noise=config["noise"] if config["prompts"]["mode"] == "noise" else None,
    script:
        "../scripts/prepare_prompts.py"
