rule mediate_layer:
    """TE, NIE and NDE of the residual stream at every layer (positions all/post/last), and
    severed paths: the residual NIE with every later MLP (or attention) output frozen at its
    benign value."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
    output:
        layer="results/{model}/layer.csv",
        severed="results/{model}/severed.csv",
    priority: 60  # the longest job first, so the two CPU lanes stay busy
    params:  # the config keys the stage reads, so changing one reruns it
        settings={k: config["mediation"][k] for k in ("split", "max_pairs", "layer_positions", "severed_positions")},
    log:
        "logs/mediate_layer/{model}.log",
    benchmark:
        "benchmarks/mediate_layer/{model}.tsv"
    conda:
        "../../envs/mediate.yaml"
    threads: 1
    resources:
        mem_mb=6000,
    script:
        "../scripts/mediate_layer.py"
