# Data: one manifest per dataset (<root>/<dataset>/manifest.parquet), the only contract
# between the data rules and everything downstream.


rule make_procedural_dataset:
    output:
        manifest=f"{ROOT}/{{dataset}}/manifest.parquet",
        rejects=f"{ROOT}/{{dataset}}/rejects.csv",
    wildcard_constraints:
        dataset=W.regex(W.datasets_by_source(config, "procedural")),
    params:
        spec=lambda w: W.json_param(C.procedural_spec(config, w.dataset)),
    log:
        f"{ROOT}/{{dataset}}/logs/make_procedural_dataset.log",
    threads: 4  # capped at --cores
    resources:
        **R.smk_resources(config, "make_procedural_dataset"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli make-procedural --spec {params.spec:q} --out {output.manifest} --threads {threads} --quiet")


rule fetch_zenodo_record:
    output:
        f"{ROOT}/{{dataset}}/archives/fetch.done.json",
    wildcard_constraints:
        dataset=W.regex(W.datasets_by_source(config, "zenodo")),
    params:
        args=lambda w: W.fetch_args(config, w.dataset),
    log:
        f"{ROOT}/{{dataset}}/logs/fetch_zenodo_record.log",
    retries: 2
    threads: 1
    resources:
        **R.smk_resources(config, "fetch_zenodo_record"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli fetch-zenodo {params.args}")


rule extract_archives:
    input:
        f"{ROOT}/{{dataset}}/archives/fetch.done.json",
    output:
        f"{ROOT}/{{dataset}}/raw/extract.done.json",
    params:
        dest=f"{ROOT}/{{dataset}}/raw",
    log:
        f"{ROOT}/{{dataset}}/logs/extract_archives.log",
    threads: 1
    resources:
        **R.smk_resources(config, "extract_archives"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli extract --from-fetch {input} --dest {params.dest} --done {output}")


rule rebuild_lsun_real:
    input:
        f"{ROOT}/{{dataset}}/raw/extract.done.json",
    output:
        f"{ROOT}/{{dataset}}/raw/lsun_real.done.json",
    params:
        args=lambda w: W.lsun_args(config, w.dataset),
    log:
        f"{ROOT}/{{dataset}}/logs/rebuild_lsun_real.log",
    threads: 4
    resources:
        **R.smk_resources(config, "rebuild_lsun_real"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli rebuild-lsun-real {params.args} --workers {threads} --done {output}")


rule check_split_digest:
    input:
        lambda w: W.digest_inputs(config, w.dataset, w.split),
    output:
        f"{ROOT}/{{dataset}}/digests/{{split}}.sha1",
    wildcard_constraints:
        split="train|val|test",
    params:
        args=lambda w: W.digest_args(config, w.dataset, w.split),
    log:
        f"{ROOT}/{{dataset}}/logs/check_split_digest_{{split}}.log",
    threads: 1
    resources:
        **R.smk_resources(config, "check_split_digest"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli tree-digest {params.args} --out {output}")


rule organize_dataset:
    input:
        lambda w: W.organize_inputs(config, w.dataset),
    output:
        manifest=f"{ROOT}/{{dataset}}/manifest.parquet",
        rejects=f"{ROOT}/{{dataset}}/rejects.csv",
    wildcard_constraints:
        dataset=W.regex(W.datasets_by_source(config, "zenodo") + W.datasets_by_source(config, "local")),
    params:
        args=lambda w: W.organize_args(config, w.dataset),
    log:
        f"{ROOT}/{{dataset}}/logs/organize_dataset.log",
    threads: 1
    resources:
        **R.smk_resources(config, "organize_dataset"),
    conda:
        ENV
    shell:
        W.logged("python3 -m bilora.cli organize {params.args} --out {output.manifest}")
