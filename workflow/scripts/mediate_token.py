import json

from harmmed.stages import run_stage
from harmmed.token import mediate_token

run_stage(snakemake, lambda smk: mediate_token(
    smk.config, json.loads(open(smk.input.manifest).read()), smk.input.inputs,
    smk.output.token, smk.threads, pairs_path=smk.input.pairs))
