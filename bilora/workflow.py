"""Input functions and paths for the Snakemake rules (no torch: cheap at DAG build).

The Snakefile and rule files hold no function definitions (``snakemake --lint``);
they call these.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from bilora import config as C


def results(cfg: dict[str, Any]) -> str:
    return f"results/{cfg['run']}"


def regex(names: list[str]) -> str:
    """A wildcard constraint matching exactly ``names`` (never matches if empty)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


def datasets_by_source(cfg: dict[str, Any], source: str) -> list[str]:
    return [n for n, ds in cfg["data"]["datasets"].items() if ds["source"] == source]


def logged(command: str) -> str:
    """A rule's shell command writing its rule log. When the command fails, the log's last
    lines (the one-line error, or a bug's traceback) also go to the job's stderr: the console,
    or the job's SLURM log on a cluster."""
    return command + " > {log} 2>&1 || {{ s=$?; tail -n 20 {log} >&2; exit $s; }}"


def json_param(obj: Any) -> str:
    """A config slice as a rule param: canonical JSON, so equal slices compare equal."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def dataset_dir(cfg: dict[str, Any], dataset: str) -> str:
    return f"{cfg['data']['root']}/{dataset}"


def manifest(cfg: dict[str, Any], dataset: str) -> str:
    return f"{dataset_dir(cfg, dataset)}/manifest.parquet"


def manifests_for(cfg: dict[str, Any], generators: list[str]) -> list[str]:
    """Manifests of the datasets holding ``generators`` (each listed once, in order)."""
    return list(dict.fromkeys(manifest(cfg, C.dataset_of(cfg, g)) for g in generators))


def detector_ids(cfg: dict[str, Any]) -> list[str]:
    """Every detector of the run, ablation variants included."""
    return list(C.detectors(cfg))


def trained_detectors(cfg: dict[str, Any]) -> list[str]:
    """Detectors whose cells train (rule train_detector)."""
    return [d for d, s in C.detectors(cfg).items() if not C.imported(s)]


def imported_detectors(cfg: dict[str, Any]) -> list[str]:
    """Detectors whose cells import released checkpoints (rule import_checkpoint)."""
    return [d for d, s in C.detectors(cfg).items() if C.imported(s)]


def artifacts(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The pretrained artifacts the run needs (as the prefetch rule's params), released
    checkpoints aside: each import_checkpoint job finds its own (``bilora prefetch`` fetches
    them too)."""
    from dataclasses import asdict

    from bilora.artifacts import needed

    return [asdict(a) for a in needed(C.detectors(cfg)) if a.kind != "checkpoint"]


def prefetch_marker(cfg: dict[str, Any]) -> list[str]:
    """What a training job waits for: the checked artifacts, when the run needs any."""
    return [f"{results(cfg)}/prefetch.json"] if artifacts(cfg) else []


def check_models(cfg: dict[str, Any]) -> None:
    """Each detector kind's model-name check, when the DAG is built (ConfigError names the key)."""
    from bilora.api.kinds import check_models as check

    check(C.detectors(cfg))


def bases(cfg: dict[str, Any]) -> dict[str, C.BaseSpec]:
    """Built base models of the run by id (``<kind>-<hash of what makes it>``): detectors
    whose recipe gives the same base share one."""
    from bilora.api.kinds import base_recipe

    out = {}
    for det, section in C.detectors(cfg).items():
        if base_recipe(section) is not None:
            spec = C.base_spec(cfg, det)
            out[f"{spec['kind']}-{C.digest(spec, 10)}"] = spec
    return out


def base_model_dir(cfg: dict[str, Any], detector: str) -> list[str]:
    """The built base a detector trains from (as a one-item list), or nothing."""
    from bilora.api.kinds import base_recipe

    if base_recipe(C.detectors(cfg)[detector]) is None:
        return []
    spec = C.base_spec(cfg, detector)
    return [f"{results(cfg)}/bases/{spec['kind']}-{C.digest(spec, 10)}"]


def cell_detectors(cfg: dict[str, Any]) -> list[str]:
    """Detectors scored cell by cell (rule score_cell)."""
    grouped = {d for dets in C.sharing_groups(cfg).values() for d in dets}
    return [d for d in C.detectors(cfg) if d not in grouped]


def group_detectors(cfg: dict[str, Any]) -> list[str]:
    """Detectors scored in groups sharing a frozen base (rules score_group, gather_scores)."""
    return [d for dets in C.sharing_groups(cfg).values() for d in dets]


def group_chunk_names(cfg: dict[str, Any]) -> list[str]:
    return list(C.group_chunks(cfg))


def group_models(cfg: dict[str, Any], group: str) -> list[str]:
    """The trained models of every cell of a scoring group."""
    dets = C.sharing_groups(cfg)[group]
    return [f"{c.path(cfg)}/model" for d in dets for c in C.cells(cfg, d)]


def group_markers(cfg: dict[str, Any], detector: str) -> list[str]:
    """The markers of a detector's scoring group's finished jobs."""
    group = C.group_of(cfg, detector)
    return [f"{results(cfg)}/groups/{group}/{c}.json" for c in group_chunk_names(cfg)]


def group_base(cfg: dict[str, Any], group: str) -> list[str]:
    return base_model_dir(cfg, C.sharing_groups(cfg)[group][0])


def scores(cfg: dict[str, Any]) -> list[str]:
    return [f"{c.path(cfg)}/scores.parquet" for c in C.cells(cfg)]


def tables(cfg: dict[str, Any]) -> list[str]:
    """Every table file the report writes (bilora.report.report_outputs)."""
    from bilora.report import report_outputs

    return [f"{results(cfg)}/tables/{n}" for n in report_outputs(C.report_spec(cfg))[0]]


def figures(cfg: dict[str, Any]) -> list[str]:
    """Every figure file the report writes."""
    from bilora.report import report_outputs

    return [f"{results(cfg)}/figures/{n}" for n in report_outputs(C.report_spec(cfg))[1]]


def digest_files(cfg: dict[str, Any]) -> list[str]:
    """Every folder-digest check file of the run's datasets."""
    return [f"{dataset_dir(cfg, name)}/digests/{s}.sha1"
            for name in cfg["data"]["datasets"] for s in digest_checks(cfg, name)]


def digest_checks(cfg: dict[str, Any], dataset: str) -> dict[str, tuple[str, str]]:
    """Split -> (expected folder digest, ``error`` or ``warn``) of a Zenodo dataset's digest
    checks: its layout's published digests (``Layout.digests``, Ricker et al.'s) with the
    section's ``digests`` and ``check_digests`` over them (default ``error``); none for
    another source, a layout without published digests, or a check set ``off``."""
    ds = cfg["data"]["datasets"][dataset]
    if ds["source"] != "zenodo":
        return {}
    from bilora.api.layouts import LAYOUTS, layout_of

    published = LAYOUTS.get(layout_of(ds)).digests
    if not published:
        return {}
    expected = {**published, **ds.get("digests", {})}
    modes = ds.get("check_digests", {})
    return {s: (expected[s], modes.get(s, "error")) for s in ricker_splits(cfg, dataset)
            if modes.get(s, "error") != "off"}


def warning_lines(cfg: dict[str, Any]) -> list[str]:
    """The run's warnings for the console at the end of a successful Snakemake run."""
    from bilora.run_warnings import console_lines

    return console_lines(f"{results(cfg)}/warnings.json")


def models(cfg: dict[str, Any]) -> list[str]:
    return [f"{c.path(cfg)}/model" for c in C.cells(cfg)]


def all_manifests(cfg: dict[str, Any]) -> list[str]:
    """The manifest of every dataset of the run."""
    return [manifest(cfg, d) for d in cfg["data"]["datasets"]]


def published_inputs(cfg: dict[str, Any]) -> list[str]:
    """The published-figures file, when the report uses one (a change reruns the report)."""
    spec = C.report_spec(cfg)
    return [spec["published"]["file"]] if spec["published"] else []


# -- real datasets ------------------------------------------------------------------------

def raw_dir(cfg: dict[str, Any], dataset: str) -> str:
    ds = cfg["data"]["datasets"][dataset]
    return f"{dataset_dir(cfg, dataset)}/raw/{ds['root_name']}"


def ricker_splits(cfg: dict[str, Any], dataset: str) -> list[str]:
    return list(cfg["data"]["datasets"][dataset]["splits"])


def fetch_args(cfg: dict[str, Any], dataset: str) -> str:
    ds = cfg["data"]["datasets"][dataset]
    z = ds["zenodo"]
    lock = z["lock"] or f"{dataset_dir(cfg, dataset)}/zenodo-{z['record']}.lock.json"
    args = ["--base-url", z["base_url"], "--record", z["record"], "--lock", lock,
            "--dest", f"{dataset_dir(cfg, dataset)}/archives", "--retries",
            str(z["retries"]), "--files", *z["files"]]
    if ds.get("extra_files"):
        args += ["--extra-files", json.dumps(ds["extra_files"], sort_keys=True)]
    if ds["archives_dir"]:
        args += ["--archives-dir", ds["archives_dir"]]
    return shlex.join(args)


def lsun_args(cfg: dict[str, Any], dataset: str) -> str:
    ds = cfg["data"]["datasets"][dataset]
    lsun = ds["lsun"]
    if not lsun["lmdb"]:
        raise C.ConfigError(f"data.datasets.{dataset}.lsun.lmdb: the LSUN Bedroom train LMDB is "
                            f"needed to rebuild the real train/val halves (or set "
                            f"data.datasets.{dataset}.splits to [test])")
    return shlex.join(["--lmdb", lsun["lmdb"], "--dest", raw_dir(cfg, dataset),
                       "--skip", str(lsun["skip"]),
                       "--train-per-generator", str(lsun["train_per_generator"]),
                       "--val-per-generator", str(lsun["val_per_generator"]),
                       "--size", str(lsun["size"]), "--generators", *lsun["order"],
                       "--extra-generators", *lsun["extra"]])


def digest_args(cfg: dict[str, Any], dataset: str, split: str) -> str:
    expected, mode = digest_checks(cfg, dataset)[split]
    args = [f"{raw_dir(cfg, dataset)}/{split}", "--expect", expected]
    return shlex.join(args + (["--warn-only"] if mode == "warn" else []))


def organize_inputs(cfg: dict[str, Any], dataset: str) -> list[str]:
    """What a dataset's manifest waits for: extraction, LSUN rebuild, digest checks."""
    ds = cfg["data"]["datasets"][dataset]
    if ds["source"] != "zenodo":
        out = []
        if ds["test_reals"] == "shared":
            out.append(manifest(cfg, cfg["data"]["shared_test_reals"]))
        if ds["train_reals"] == "lsun":
            out.append(f"{dataset_dir(cfg, C.lsun_dataset(cfg))}/raw/lsun_real.done.json")
        return out
    d = dataset_dir(cfg, dataset)
    splits = ricker_splits(cfg, dataset)
    out = [f"{d}/raw/extract.done.json"]
    if {"train", "val"} & set(splits):
        out.append(f"{d}/raw/lsun_real.done.json")
    out += [f"{d}/digests/{s}.sha1" for s in digest_checks(cfg, dataset)]
    return out


def digest_inputs(cfg: dict[str, Any], dataset: str, split: str) -> list[str]:
    d = dataset_dir(cfg, dataset)
    out = [f"{d}/raw/extract.done.json"]
    if split in ("train", "val"):
        out.append(f"{d}/raw/lsun_real.done.json")
    return out


def organize_args(cfg: dict[str, Any], dataset: str) -> str:
    ds = cfg["data"]["datasets"][dataset]
    sample = cfg["data"]["sample"]
    args = ["--dataset-dir", dataset_dir(cfg, dataset),
            "--max-rejected-fraction", str(cfg["data"]["max_rejected_fraction"]),
            "--seed", str(cfg["seed"])]
    if sample["train_per_class"] is not None:
        args += ["--train-per-class", str(sample["train_per_class"])]
    if sample["test_fakes_per_generator"] is not None:
        args += ["--test-fakes-per-generator", str(sample["test_fakes_per_generator"])]
    if ds["source"] == "zenodo":
        from bilora.api.layouts import layout_of

        args += ["--layout", layout_of(ds), "--source", raw_dir(cfg, dataset),
                 "--generators", *ds["generators"], "--splits", *ricker_splits(cfg, dataset)]
    else:
        args += ["--layout", ds["layout"]]
        if "path" in ds:  # else the layout's hub key (the schema requires one of them)
            args += ["--source", ds["path"]]
        if "generator" in ds:
            args += ["--generator", ds["generator"]]
        else:
            args += ["--generators", *ds["generators"]]
        if ds["splits"]:
            args += ["--splits", *ds["splits"]]
        if ds["test_reals"] == "shared":
            args += ["--test-reals-from", manifest(cfg, cfg["data"]["shared_test_reals"])]
        elif dataset != cfg["data"]["shared_test_reals"]:
            args += ["--cap-test-reals"]  # its own reals, capped like its fakes
        if ds["train_reals"] == "lsun":
            from bilora.data.lsun import EXTRA_DIR

            args += ["--train-reals-dir",
                     f"{dataset_dir(cfg, C.lsun_dataset(cfg))}/raw/{EXTRA_DIR}"]
        if ds["split_map"]:
            args += ["--split-map", ",".join(f"{k}={v}" for k, v in ds["split_map"].items())]
    args += layout_param_args(ds)
    return shlex.join(args)


def layout_param_args(ds: dict[str, Any]) -> list[str]:
    """``--param KEY=JSON`` for each dataset key a layout brings (its schema properties)
    that organize has no flag of its own for."""
    from bilora.api.layouts import LAYOUTS, ORGANIZE_OPTIONS, layout_of

    own = LAYOUTS.get(layout_of(ds)).schema.get("properties", {})
    return [a for key in own if key in ds and key not in ORGANIZE_OPTIONS
            for a in ("--param", f"{key}={json.dumps(ds[key], sort_keys=True)}")]


# -- the attack axis (evaluation.attacks) -------------------------------------------------

def attack_notes(cfg: dict[str, Any]) -> list[str]:
    """Lines for the console at DAG build: detectors left out of white-box attacks."""
    from bilora.attacks.plan import check

    return check(cfg)


def attacked_detectors(cfg: dict[str, Any]) -> list[str]:
    """Detectors with an attack_cell job."""
    from bilora.attacks.plan import attacked_cells

    return list(dict.fromkeys(c.detector for c in attacked_cells(cfg)))


def attack_dirs(cfg: dict[str, Any]) -> list[str]:
    from bilora.attacks.plan import attacked_cells

    return [f"{c.path(cfg)}/attack" for c in attacked_cells(cfg)]


def transfer_files(cfg: dict[str, Any]) -> list[str]:
    from bilora.attacks.plan import transfer_cells

    return [f"{c.path(cfg)}/transfer.parquet" for c in transfer_cells(cfg)]


def transfer_sources(cfg: dict[str, Any], wildcards: Any) -> dict[str, str]:
    """Source detector id -> its attack folder, for one transfer_cell job."""
    from bilora.attacks.plan import transfer_cells

    target = C.Cell(wildcards.detector, wildcards.generator, int(wildcards.seed))
    return {s.detector: f"{s.path(cfg)}/attack" for s in transfer_cells(cfg).get(target, [])}


def transfer_targets(cfg: dict[str, Any]) -> list[str]:
    from bilora.attacks.plan import transfer_cells

    return list(dict.fromkeys(c.detector for c in transfer_cells(cfg)))


def attack_outputs(cfg: dict[str, Any]) -> list[str]:
    """The attack report's files (none without ``evaluation.attacks``)."""
    if not attack_dirs(cfg):
        return []
    from bilora.report.attacks import output_names

    tables, figures = output_names()
    return ([f"{results(cfg)}/tables/{n}" for n in tables]
            + [f"{results(cfg)}/figures/{n}" for n in figures])
