import json

from harmmed.stages import run_stage, screen_units

run_stage(snakemake, lambda smk: screen_units(
    smk.config, json.loads(open(smk.input.manifest).read()), smk.input.inputs,
    smk.output.screen, smk.output.report, smk.output.heldout, smk.threads))
