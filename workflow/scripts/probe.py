import json

from harmmed.probe import run_probe
from harmmed.stages import run_stage

run_stage(snakemake, lambda smk: run_probe(
    smk.config, json.loads(open(smk.input.manifest).read()), smk.input.inputs,
    smk.output.probe, smk.threads))
