import json

from harmmed.stages import mediate_claims, run_stage

run_stage(snakemake, lambda smk: mediate_claims(
    smk.config, json.loads(open(smk.input.manifest).read()), smk.input.inputs, smk.input.module,
    smk.input.ranking, smk.output.patches, smk.threads))
