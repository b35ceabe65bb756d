from pathlib import Path

from harmmed.stages import run_stage, token_figures

run_stage(snakemake, lambda smk: token_figures(
    smk.input.manifest, smk.input.token, smk.input.inputs, Path(smk.output.harm).parent / "token_heatmap"))
