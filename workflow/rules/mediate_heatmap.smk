rule mediate_heatmap:
    """Layer x position NIE of the residual stream, MLP and attention outputs on the first
    heatmap pairs (Meng et al.'s three panels)."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
    output:
        heatmap="results/{model}/heatmap.csv",
        tokens="results/{model}/heatmap_tokens.json",
    priority: 50  # long jobs first, so the two CPU lanes stay busy
    params:  # the config keys the stage reads, so changing one reruns it
        settings={k: config["mediation"][k] for k in ("split", "max_pairs", "heatmap")},
        mode=config["prompts"]["mode"],
    log:
        "logs/mediate_heatmap/{model}.log",
    benchmark:
        "benchmarks/mediate_heatmap/{model}.tsv"
    conda:
        "../../envs/mediate.yaml"
    threads: 1
    resources:
        mem_mb=6000,
    script:
        "../scripts/mediate_heatmap.py"
