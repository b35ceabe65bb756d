from harmmed.generation import download_judge
from harmmed.stages import run_stage

run_stage(snakemake, lambda smk: download_judge(smk.config, "data/models", smk.output.manifest))
