rule finetune_model:
    """Train a copy of the base model's `trainable` components to refuse harmful requests
    (data: the model entry's `data`, disjoint from the analysed pairs), save it as safetensors,
    check its behaviour on held-out pairs and write its manifest (with `planted`, the ground truth)."""
    input:
        base=lambda w: f"results/{FINETUNED[w.model]['base']}/manifest.json",
        data=lambda w: FINETUNED[w.model]["data"],
        pairs=config["prompts"]["pairs_file"],
    output:
        manifest="results/{model}/manifest.json",
    log:
        "logs/finetune_model/{model}.log",
    benchmark:
        "benchmarks/finetune_model/{model}.tsv"
    wildcard_constraints:
        model=_names_regex(FINETUNED),
    priority: 60  # every stage of the model waits for it
    conda:
        "../../envs/mediate.yaml"
    threads: MODEL_THREADS  # recorded in the manifest: byte-identical weights need the same thread count
    resources:  # training holds weights, gradients and two Adam moments: twice an analysis job
        mem_mb=lambda wildcards, input, threads: _checked("finetune_model", threads, 2 * model_mem_mb(input.base)),
        gpu=MODEL_GPUS,
        runtime=MODEL_RUNTIME,
        slurm_partition=MODEL_PARTITION,
    params:
        settings=reads(
            "finetune",
            "prompts.pairs_file",
            "prompts.mode",
            "prompts.discovery_fraction",
            "prompts.split_seed",
            "metrics.refusal_phrases",
            "generation.judge.phrases",
            model=True,
            scored=False,
        ),
    script:
        "../scripts/finetune_model.py"
