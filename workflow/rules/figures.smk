rule figures:
    """Layer curves, the residual/mlp/attn heatmaps, MLP vs attention and severed paths (PNG+PDF)."""
    input:
        manifest="results/{model}/manifest.json",
        layer="results/{model}/layer.csv",
        module="results/{model}/module.csv",
        severed="results/{model}/severed.csv",
        heatmap="results/{model}/heatmap.csv",
        inputs="results/{model}/inputs.jsonl",
        tokens="results/{model}/heatmap_tokens.json",
    output:
        layer_curves=model_figure("layer_curves", "layer_curves"),
        module_curves=model_figure("module_curves", "module_curves"),
        severed=model_figure("severed_paths", "severed_paths"),
        heatmap_harm=model_figure("heatmap_harm", "heatmap"),
        heatmap_refusal=model_figure("heatmap_refusal", "heatmap"),
        pdfs=expand("figures/{{model}}/{name}.pdf", name=MODEL_FIGURES),
    log:
        "logs/figures/{model}.log",
    benchmark:
        "benchmarks/figures/{model}.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        settings=reads("effects"),
    script:
        "../scripts/figures.py"


rule cross_model_figure:
    """Residual NIE / TE against relative depth for every model that runs the layer sweep."""
    input:
        manifests=per_model("results/{model}/manifest.json", "mediate_layer"),
        layers=per_model("results/{model}/layer.csv", "mediate_layer"),
    output:
        png=report("figures/cross_model.png", caption="../report/cross_model.rst", category="cross-model"),
        pdf="figures/cross_model.pdf",
    log:
        "logs/cross_model_figure/all.log",
    benchmark:
        "benchmarks/cross_model_figure/all.tsv"
    conda:
        "../../envs/analysis.yaml"
    params:
        settings=reads("effects"),
    script:
        "../scripts/cross_model_figure.py"
