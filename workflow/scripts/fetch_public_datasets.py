from pathlib import Path

from harmmed.stages import fetch_public_datasets, run_stage

# The downloads are cached beside the sampled pairs (data/raw/).
run_stage(snakemake, lambda smk: fetch_public_datasets(smk.config, Path(smk.output.pairs).parent, smk.output.pairs))
