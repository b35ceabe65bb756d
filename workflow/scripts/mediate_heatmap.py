import json

from harmmed.stages import mediate_heatmap, run_stage

run_stage(snakemake, lambda smk: mediate_heatmap(
    smk.config, json.loads(open(smk.input.manifest).read()), smk.input.inputs,
    smk.output.heatmap, smk.output.tokens, smk.threads))
