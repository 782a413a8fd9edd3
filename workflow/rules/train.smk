# Training: one job per cell (detector x training generator), resumable from
# results/<run>/<detector>/train=<G>/checkpoint/ (not an output: survives a failed job).


rule build_base_model:
    output:
        directory(f"{RES}/{{detector}}/base"),
    params:
        spec=lambda w: W.json_param(C.base_spec(config, w.detector)),
    log:
        f"{RES}/{{detector}}/build_base_model.log",
    threads: 1
    resources:
        **R.smk_resources(config, "build_base_model"),
    conda:
        ENV
    shell:
        "python3 -m bilora.cli build-base --spec {params.spec:q} --out {output} --threads {threads} > {log} 2>&1"


rule train_detector:
    input:
        manifests=lambda w: W.manifests_for(config, [w.generator]),
        base=lambda w: W.base_model_dir(config, w.detector),
    output:
        model=directory(f"{RES}/{{detector}}/train={{generator}}/model"),
    params:
        spec=lambda w: W.json_param(C.train_spec(config, w.detector, w.generator)),
        base=lambda w, input: f"--base {input.base}" if input.base else "",
        checkpoint=f"{RES}/{{detector}}/train={{generator}}/checkpoint",
    log:
        f"{RES}/{{detector}}/train={{generator}}/train.log",
    threads: config["threads"]
    resources:
        **R.smk_resources(config, "train_detector"),
        # not a rerun trigger (unlike params): decoding workers do not change results
        num_workers=config["data"]["num_workers"],
    conda:
        ENV
    shell:
        "python3 -m bilora.cli train --spec {params.spec:q} --manifest {input.manifests} {params.base}"
        " --out {output.model} --checkpoint-dir {params.checkpoint} --threads {threads}"
        " --num-workers {resources.num_workers} > {log} 2>&1"
