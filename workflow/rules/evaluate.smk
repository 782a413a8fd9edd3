# Evaluation: every trained model scores every test generator under every perturbation;
# per-image scores are kept, so a new metric needs no forward pass.
#   score_cell     one job per cell (timm, dummy, and Bi-LoRA with evaluation.sharing: cell)
#   score_group    Bi-LoRA cells sharing a frozen base: a job (evaluation.group_jobs of them)
#                  computes each test image's frozen features once per condition and runs
#                  every adapter from them
#   gather_scores  a grouped cell's scores.parquet, in the same format as score_cell's


rule score_cell:
    input:
        model=f"{CELL}/model",
        manifests=W.manifests_for(config, config["generators"]["test"]),
        base=lambda w: W.base_model_dir(config, w.detector),
    output:
        f"{CELL}/scores.parquet",
    wildcard_constraints:
        detector=W.regex(W.cell_detectors(config)),
    params:
        spec=lambda w: W.json_param(C.score_spec(config, w.detector)),
    log:
        f"{CELL}/score.log",
    threads: config["threads"]
    resources:
        **R.smk_resources(config, "score_cell"),
        num_workers=config["data"]["num_workers"],
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli score --spec {params.spec:q} --model {input.model} --manifest {input.manifests}"
                 " --train-generator {wildcards.generator} --seed {wildcards.seed} --out {output}"
                 " --threads {threads} --num-workers {resources.num_workers}")


rule score_group:
    input:
        models=lambda w: W.group_models(config, w.group),
        manifests=W.manifests_for(config, config["generators"]["test"]),
        base=lambda w: W.group_base(config, w.group),
    output:
        f"{RES}/groups/{{group}}/{{chunk}}.json",
    wildcard_constraints:
        group=W.regex(list(C.sharing_groups(config))),
        chunk=W.regex(W.group_chunk_names(config)),
    params:
        spec=lambda w: W.json_param(C.group_score_spec(config, w.group, w.chunk)),
    log:
        f"{RES}/groups/{{group}}/{{chunk}}.log",
    threads: config["threads"]
    resources:
        **R.smk_resources(config, "score_group"),
        num_workers=config["data"]["num_workers"],
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli score-group --spec {params.spec:q} --models {input.models}"
                 " --manifest {input.manifests} --out {output} --threads {threads}"
                 " --num-workers {resources.num_workers}")


rule gather_scores:
    input:
        model=f"{CELL}/model",
        manifests=W.manifests_for(config, config["generators"]["test"]),
        conditions=lambda w: W.group_markers(config, w.detector),
    output:
        f"{CELL}/scores.parquet",
    wildcard_constraints:
        detector=W.regex(W.group_detectors(config)),
    params:
        spec=lambda w: W.json_param(C.score_spec(config, w.detector)),
    log:
        f"{CELL}/score.log",
    threads: 1
    resources:
        **R.smk_resources(config, "gather_scores"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli gather-scores --spec {params.spec:q} --model {input.model}"
                 " --manifest {input.manifests} --train-generator {wildcards.generator}"
                 " --seed {wildcards.seed} --out {output}")
