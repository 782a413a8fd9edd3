# Metrics and report: never touch a model, only per-image scores (and their metadata).


rule compute_metrics:
    input:
        W.scores(config),
    output:
        parquet=f"{RES}/metrics.parquet",
        csv=f"{RES}/metrics.csv",
        bootstrap=f"{RES}/bootstrap.npz",
    params:
        spec=W.json_param(C.metrics_spec(config)),
    log:
        f"{RES}/logs/compute_metrics.log",
    threads: 1
    resources:
        **R.smk_resources(config, "compute_metrics"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli metrics --spec {params.spec:q} --scores {input} --out {output.parquet}")


rule collect_warnings:
    input:
        manifests=W.all_manifests(config),
        digests=W.digest_files(config),
        models=W.models(config),
    output:
        f"{RES}/warnings.json",
    params:
        spec=W.json_param({"max_rejected_fraction": config["data"]["max_rejected_fraction"]}),
    log:
        f"{RES}/logs/collect_warnings.log",
    threads: 1
    resources:
        **R.smk_resources(config, "collect_warnings"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli collect-warnings --spec {params.spec:q} --manifests {input.manifests}"
                 " --digests {input.digests} --models {input.models} --out {output}")


rule render_report:
    input:
        metrics=f"{RES}/metrics.parquet",
        bootstrap=f"{RES}/bootstrap.npz",
        warnings=f"{RES}/warnings.json",
        scores=W.scores(config),
        manifests=W.all_manifests(config),
        published=W.published_inputs(config),
    output:
        report(W.tables(config), caption="../report/tables.rst", category="Tables"),
        report(W.figures(config), caption="../report/figures.rst", category="Figures"),
    params:
        spec=W.json_param(C.report_spec(config)),
        tables=lambda w, output: os.path.dirname(output[0]),
        figures=lambda w, output: os.path.dirname(output[-1]),
    log:
        f"{RES}/logs/render_report.log",
    threads: 1
    resources:
        **R.smk_resources(config, "render_report"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli report --spec {params.spec:q} --metrics {input.metrics}"
                 " --bootstrap {input.bootstrap} --scores {input.scores} --manifests {input.manifests}"
                 " --warnings {input.warnings} --tables {params.tables} --figures {params.figures}")
