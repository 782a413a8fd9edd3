# The attack axis (evaluation.attacks; a small grid in the embedded default, the issue's
# grid on a subset of every test set in paper.yaml and field.yaml):
#   attack_cell           white-box FGSM / PGD on one cell: adversarial PNGs and their scores
#   transfer_cell         one cell scores the adversarial images of other detectors' cells
#   render_attack_report  accuracy / AUC vs eps, evasion and framing, the transfer matrix


rule attack_cell:
    input:
        model=f"{CELL}/model",
        manifests=W.manifests_for(config, config["generators"]["test"]),
        base=lambda w: W.base_model_dir(config, w.detector),
    output:
        directory(f"{CELL}/attack"),
    wildcard_constraints:
        detector=W.regex(W.attacked_detectors(config)),
    params:
        spec=lambda w: W.json_param(A.attack_spec(config, w.detector)),
    log:
        f"{CELL}/attack.log",
    threads: config["threads"]
    resources:
        **R.smk_resources(config, "attack_cell"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli attack --spec {params.spec:q} --model {input.model}"
                 " --manifest {input.manifests} --out {output} --threads {threads}")


rule transfer_cell:
    input:
        model=f"{CELL}/model",
        sources=lambda w: list(W.transfer_sources(config, w).values()),
        base=lambda w: W.base_model_dir(config, w.detector),
    output:
        f"{CELL}/transfer.parquet",
    wildcard_constraints:
        detector=W.regex(W.transfer_targets(config)),
    params:
        spec=lambda w: W.json_param(A.attack_spec(config, w.detector)),
        ids=lambda w: " ".join(W.transfer_sources(config, w)),
    log:
        f"{CELL}/transfer.log",
    threads: config["threads"]
    resources:
        **R.smk_resources(config, "transfer_cell"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli transfer --spec {params.spec:q} --model {input.model}"
                 " --sources {input.sources} --source-ids {params.ids} --out {output}"
                 " --threads {threads}")


rule render_attack_report:
    input:
        attacks=W.attack_dirs(config),
        transfers=W.transfer_files(config),
    output:
        report(W.attack_outputs(config), caption="../report/attacks.rst", category="Attacks"),
    params:
        spec=W.json_param(A.report_spec(config)),
        tables=lambda w, output: os.path.dirname(output[0]),
        figures=lambda w, output: os.path.dirname(output[-1]),
    log:
        f"{RES}/logs/render_attack_report.log",
    threads: 1
    resources:
        **R.smk_resources(config, "render_attack_report"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli attack-report --spec {params.spec:q} --attacks {input.attacks}"
                 " --transfers {input.transfers} --tables {params.tables} --figures {params.figures}")
