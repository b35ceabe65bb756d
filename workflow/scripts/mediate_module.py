import json

from harmmed.stages import mediate_module, run_stage

run_stage(snakemake, lambda smk: mediate_module(
    smk.config, json.loads(open(smk.input.manifest).read()), smk.input.inputs,
    smk.output.module, smk.threads))
