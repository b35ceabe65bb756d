from harmmed.generation import generation_figure
from harmmed.stages import run_stage

run_stage(snakemake, lambda smk: generation_figure(smk.input.manifest, smk.input.rates, smk.output.png))
