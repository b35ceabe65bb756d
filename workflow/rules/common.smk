# Globals and input functions shared by the rules and by `rule all` (included first by the Snakefile).

MODELS = [m["name"] for m in config["models"]]
SKIPPED = {m["name"]: set(m["skip_stages"]) for m in config["models"]}  # a model's skip_stages
PUBLIC = config["prompts"]["public"]

# Figures written per model (PNG for the report, PDF beside each).
MODEL_FIGURES = ["layer_curves", "module_curves", "severed_paths", "heatmap_harm", "heatmap_refusal"]
NEURON_FIGURES = ["neuron_distribution", "sparsity", "block_vs_sum", "gating"]
TOKEN_METRICS = ["harm", "refusal"]


def results(path):
    """``results/<model>/<path>`` for every configured model."""
    return expand(f"results/{{model}}/{path}", model=MODELS)


def per_model(pattern, stage, **wildcards):
    """``pattern`` for every model that runs ``stage`` (a model's skip_stages leave it out)."""
    return expand(pattern, model=[m for m in MODELS if stage not in SKIPPED[m]], **wildcards)


def model_figure(name, caption):
    return report(f"figures/{{model}}/{name}.png", caption=f"../report/{caption}.rst",
                  category="{model}", subcategory=name)


def pairs_source(wildcards):
    """The prompt pairs prepare_prompts reads: the sampled public pairs, or the configured file."""
    return "data/raw/unpaired_pairs.csv" if PUBLIC["enabled"] else config["prompts"]["pairs_file"]


def judge_manifest(wildcards):
    """The judge manifest, needed only when the configured judge is a model."""
    return ["results/judge/manifest.json"] if config["generation"]["judge"]["kind"] == "model" else []
