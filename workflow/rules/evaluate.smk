# Evaluation: per cell, load the model once and score every test generator under every
# perturbation; per-image scores are kept, so a new metric needs no forward pass.


rule score_cell:
    input:
        model=f"{RES}/{{detector}}/train={{generator}}/model",
        manifests=W.manifests_for(config, config["generators"]["test"]),
        base=lambda w: W.base_model_dir(config, w.detector),
    output:
        f"{RES}/{{detector}}/train={{generator}}/scores.parquet",
    params:
        spec=lambda w: W.json_param(C.score_spec(config, w.detector)),
    log:
        f"{RES}/{{detector}}/train={{generator}}/score.log",
    threads: config["threads"]
    resources:
        **R.smk_resources(config, "score_cell"),
        num_workers=config["data"]["num_workers"],
    conda:
        ENV
    shell:
        "python3 -m bilora.cli score --spec {params.spec:q} --model {input.model} --manifest {input.manifests}"
        " --train-generator {wildcards.generator} --out {output} --threads {threads}"
        " --num-workers {resources.num_workers} > {log} 2>&1"
