from pathlib import Path

from harmmed.stages import run_stage, verify

run_stage(snakemake, lambda smk: verify(
    smk.config, Path(smk.input.provenance).parent, smk.output.csv, smk.output.md, smk.threads))
