from harmmed.stages import generate_and_judge, run_stage

run_stage(snakemake, lambda smk: generate_and_judge(
    smk.config, smk.input.manifest, smk.input.inputs, smk.input.gating,
    smk.output.generations, smk.output.rates, smk.threads,
    judge_manifest=smk.input.judge[0] if len(smk.input.judge) else None, models_dir="data/models"))
