rule mediate_module:
    """NIE of attention and MLP outputs at every layer, single layers and windows."""
    input:
        manifest="results/{model}/manifest.json",
        inputs="results/{model}/inputs.jsonl",
    output:
        module="results/{model}/module.csv",
    priority: 35  # long jobs first, so the two CPU lanes stay busy
    params:  # the config keys the stage reads, so changing one reruns it
        settings={k: config["mediation"][k] for k in ("split", "max_pairs", "module_positions", "windows")},
    log:
        "logs/mediate_module/{model}.log",
    benchmark:
        "benchmarks/mediate_module/{model}.tsv"
    conda:
        "../../envs/mediate.yaml"
    threads: 1
    resources:
        mem_mb=6000,
    script:
        "../scripts/mediate_module.py"
