from pathlib import Path

from harmmed.stages import run_stage, screen_figures

run_stage(snakemake, lambda smk: screen_figures(smk.config, dict(smk.input.items()), Path(smk.output.scatter).parent))
