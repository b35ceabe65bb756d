import json

from harmmed.stages import mediate_layer, run_stage

run_stage(snakemake, lambda smk: mediate_layer(
    smk.config, json.loads(open(smk.input.manifest).read()), smk.input.inputs,
    smk.output.layer, smk.output.severed, smk.threads))
