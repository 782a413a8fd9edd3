# Training: one job per cell (detector x training generator x seed), resumable from
# results/<run>/<detector>/train=<G>/seed=<S>/checkpoint/ (not an output: it survives a
# failed job, and a finished cell removes it).


rule build_base_model:
    output:
        directory(f"{RES}/bases/{{base}}"),
    params:
        spec=lambda w: W.json_param(W.bases(config)[w.base]),
    log:
        f"{RES}/bases/{{base}}.log",
    threads: 1
    resources:
        **R.smk_resources(config, "build_base_model"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli build-base --spec {params.spec:q} --out {output} --threads {threads}")


rule prefetch_models:
    output:
        f"{RES}/prefetch.json",
    params:
        spec=W.json_param(W.artifacts(config)),
    log:
        f"{RES}/logs/prefetch_models.log",
    threads: 1
    resources:
        **R.smk_resources(config, "prefetch_models"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli prefetch --spec {params.spec:q} --out {output}")


rule train_detector:
    input:
        manifests=lambda w: W.manifests_for(config, [w.generator]),
        base=lambda w: W.base_model_dir(config, w.detector),
        artifacts=W.prefetch_marker(config),
    output:
        model=directory(f"{CELL}/model"),
    wildcard_constraints:
        detector=W.regex(W.trained_detectors(config)),
    params:
        spec=lambda w: W.json_param(C.train_spec(config, w.detector, w.generator, int(w.seed))),
        base=lambda w, input: f"--base {input.base}" if input.base else "",
        checkpoint=f"{CELL}/checkpoint",
    log:
        f"{CELL}/train.log",
    threads: config["threads"]
    resources:
        **R.smk_resources(config, "train_detector"),
        # not a rerun trigger (unlike params): decoding workers do not change results
        num_workers=config["data"]["num_workers"],
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli train --spec {params.spec:q} --manifest {input.manifests} {params.base}"
                 " --out {output.model} --checkpoint-dir {params.checkpoint} --threads {threads}"
                 " --num-workers {resources.num_workers}")


# Cells of a detector with `weights: {from: checkpoints}`: its released weights, imported
# into the same model folder a training job writes (docs/scoring_a_checkpoint.md).
rule import_checkpoint:
    input:
        base=lambda w: W.base_model_dir(config, w.detector),
        artifacts=W.prefetch_marker(config),
    output:
        model=directory(f"{CELL}/model"),
    wildcard_constraints:
        detector=W.regex(W.imported_detectors(config)),
    params:
        spec=lambda w: W.json_param(C.import_spec(config, w.detector, w.generator, int(w.seed))),
        source=lambda w: C.import_spec(config, w.detector, w.generator, int(w.seed))["checkpoint"]["source"],
        base=lambda w, input: f"--base {input.base}" if input.base else "",
    log:
        f"{CELL}/import.log",
    threads: 1
    resources:
        **R.smk_resources(config, "import_checkpoint"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli import-checkpoint --spec {params.spec:q} --source {params.source:q}"
                 " {params.base} --out {output.model}")
