from pathlib import Path

from harmmed.stages import figures, run_stage

run_stage(snakemake, lambda smk: figures(smk.config, dict(smk.input.items()), Path(smk.output.layer_curves).parent))
