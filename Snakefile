# Causal mediation of harmful generation (replication of arXiv:2604.11663).
# Stages live in workflow/rules/, one file each; all logic lives in the `harmmed` package.

import os

from snakemake.utils import min_version, update_config

from harmmed.config import typed_overrides, validate_config

min_version("8.0")

# Jobs (including those in per-stage conda envs) import the package from this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(Path(workflow.basedir) / "src"), os.environ.get("PYTHONPATH")])
)


envvars:
    "PYTHONPATH",


configfile: "config/config.yaml"


update_config(config, typed_overrides(dict(workflow.config_settings.config)))  # --config values, typed
config.update(validate_config(config, source=" + ".join(map(str, workflow.configfiles)) or None))

if not workflow.non_local_exec:  # a cluster's GPUs are on its nodes, not where this runs
    from harmmed.models.checks import check_config_devices

    check_config_devices(config)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/finetune_model.smk"
include: "workflow/rules/download_model.smk"
include: "workflow/rules/prepare_prompts.smk"
include: "workflow/rules/mediate_layer.smk"
include: "workflow/rules/mediate_module.smk"
include: "workflow/rules/mediate_heatmap.smk"
include: "workflow/rules/mediate_neuron.smk"
include: "workflow/rules/mediate_token.smk"
include: "workflow/rules/screen_units.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/mediate_claims.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/recovery.smk"
include: "workflow/rules/verify.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/merge_shards.smk"


rule all:
    input:
        results("claims.csv"),
        results("provenance.json"),
        expand("figures/{model}/claims.md", model=MODELS),
        per_model("figures/{model}/{figure}.png", "figures", figure=STAGE_FIGURES["figures"]),
        per_model("figures/{model}/{figure}.png", "mediate_token", figure=STAGE_FIGURES["mediate_token"]),
        per_model("figures/{model}/{figure}.png", "generate", figure=STAGE_FIGURES["generate"]),
        "results/calibration.csv",
        "figures/calibration.png",
        "results/summary.csv",
        "figures/summary.md",
        per_model("figures/{model}/{figure}.png", "screen", figure=STAGE_FIGURES["screen"]),
        ["figures/cross_model.png"] if len(per_model("{model}", "mediate_layer")) > 1 else [],
        ["figures/recovery.png"] if PLANTED else [],
