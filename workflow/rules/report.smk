# Metrics and report: never touch a model, only per-image scores.


rule compute_metrics:
    input:
        W.scores(config),
    output:
        parquet=f"{RES}/metrics.parquet",
        csv=f"{RES}/metrics.csv",
    params:
        spec=W.json_param(C.report_spec(config)),
    log:
        f"{RES}/logs/compute_metrics.log",
    threads: 1
    resources:
        **R.smk_resources(config, "compute_metrics"),
    conda:
        ENV
    shell:
        "python3 -m bilora.cli metrics --spec {params.spec:q} --scores {input} --out {output.parquet} > {log} 2>&1"


rule render_report:
    input:
        f"{RES}/metrics.parquet",
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
        "python3 -m bilora.cli report --spec {params.spec:q} --metrics {input} --tables {params.tables}"
        " --figures {params.figures} > {log} 2>&1"
