from pathlib import Path

from harmmed.stages import run_stage, screen_figures

run_stage(snakemake, lambda smk: screen_figures(
    smk.config, smk.input.manifest, smk.input.screen, smk.input.report, smk.input.heldout,
    Path(smk.output.scatter).parent))
