from harmmed.stages import probe_figure, run_stage

run_stage(snakemake, lambda smk: probe_figure(
    smk.config, smk.input.manifest, smk.input.probe, smk.output.png[: -len(".png")]))
