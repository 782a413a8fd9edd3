"""The ``bilora`` command: what every Snakemake rule calls.

Workflow steps take a ``--spec`` (the JSON config slice of one job, as the rule's
params carry it) and explicit input/output paths. ``ls``, ``validate`` and
``describe`` read a config file the way the Snakefile does. Heavy libraries are
imported inside the commands, so ``bilora --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bilora

log = logging.getLogger("bilora")


def _spec(text: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"bilora: --spec is not valid JSON: {exc}") from None


def _setup(args: argparse.Namespace) -> None:
    import torch

    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)


def provenance(spec: dict[str, Any], **extra: Any) -> dict[str, str]:
    """Package version, git commit, config-slice hash (and what the caller adds)."""
    from bilora.config import digest

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(bilora.__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import torch

    return {"bilora_version": bilora.__version__, "git_commit": commit or "unknown",
            "torch_version": torch.__version__, "config_hash": digest(spec),
            **{k: str(v) for k, v in extra.items()}}


# -- data ---------------------------------------------------------------------------------

def cmd_make_procedural(args: argparse.Namespace) -> int:
    from bilora.data.procedural import ProceduralSpec, make_dataset

    spec = _spec(args.spec)
    ds = spec["dataset"]
    out = Path(args.out)
    make_dataset(ProceduralSpec(generators=ds["generators"],
                                train_generators=ds["generators"],
                                image_size=ds["image_size"],
                                train_per_class=ds["train_per_class"],
                                test_per_class=ds["test_per_class"], seed=spec["seed"]),
                 out.parent, spec["max_rejected_fraction"], progress=not args.quiet,
                 workers=args.threads or 1)
    return 0


# -- models -------------------------------------------------------------------------------

def cmd_build_base(args: argparse.Namespace) -> int:
    from bilora.tiny_blip2 import build_tiny_blip2

    spec = _spec(args.spec)
    _setup(args)
    build_tiny_blip2(spec["tiny"], args.out, spec["seed"])
    log.info("tiny BLIP-2 base written to %s", args.out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bilora.config import digest
    from bilora.data.dataset import ImageTable, load_rows
    from bilora.data.manifest import manifest_digest
    from bilora.detectors import create_detector, resolve_device, save_detector
    from bilora.training import CHECKPOINT, train_detector

    spec = _spec(args.spec)
    _setup(args)
    rows = load_rows(args.manifest, "train", [spec["train_generator"]])
    data_digest = manifest_digest(rows)
    det = create_detector(spec["detector"], seed=spec["seed"], base_dir=args.base)
    det.to(resolve_device(spec["device"]))
    counts = det.parameter_counts()
    log.info("%s: %d images of %s; parameters %d, trainable %d", spec["detector_id"], len(rows),
             spec["train_generator"], counts["total"], counts["trainable"])
    dataset = ImageTable(rows, det.input_size)
    history = train_detector(det, dataset, spec["detector"]["train"], spec["seed"],
                             args.checkpoint_dir, digest([spec, data_digest], length=40),
                             num_workers=args.num_workers, progress=not args.quiet)
    save_detector(det, args.out, provenance(spec, data_manifest_sha1=data_digest,
                                            history=json.dumps(history)))
    # trained and saved: a later forced rerun (new code, new base) must train again
    (Path(args.checkpoint_dir) / CHECKPOINT).unlink(missing_ok=True)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from bilora.data.dataset import load_rows
    from bilora.data.manifest import manifest_digest, write_parquet_atomic
    from bilora.data.perturbations import conditions
    from bilora.detectors import load_detector, read_detector_meta
    from bilora.evaluation import score_table

    spec = _spec(args.spec)
    _setup(args)
    rows = load_rows(args.manifest, "test", spec["test_generators"])
    det = load_detector(args.model, spec["device"])
    meta = read_detector_meta(args.model)
    scores = score_table(det, rows, conditions(spec["perturbations"]), spec["seed"],
                         spec["eval"]["batch_size"], args.num_workers,
                         progress=not args.quiet)
    train = args.train_generator
    write_parquet_atomic(scores, args.out, provenance(
        spec, detector=spec["detector_id"], detector_label=det.describe(), train=train,
        data_manifest_sha1=manifest_digest(rows),
        model_config_hash=meta["provenance"].get("config_hash", "")))
    log.info("%d scores written to %s", len(scores), args.out)
    return 0


# -- metrics and report -------------------------------------------------------------------

def read_scores(paths: Sequence[str]) -> tuple[Any, dict[str, str]]:
    """Concatenate score files, tagging rows with detector and training generator."""
    import pandas as pd
    import pyarrow.parquet as pq

    frames, labels = [], {}
    for p in paths:
        meta = {k.decode(): v.decode() for k, v in (pq.read_schema(p).metadata or {}).items()
                if not k.startswith(b"pandas")}
        for key in ("detector", "train"):
            if key not in meta:
                raise SystemExit(f"bilora: {p} lacks '{key}' in its metadata: not a score file")
        df = pd.read_parquet(p)
        df.insert(0, "train", meta["train"])
        df.insert(0, "detector", meta["detector"])
        frames.append(df)
        labels[meta["detector"]] = meta.get("detector_label", meta["detector"])
    return pd.concat(frames, ignore_index=True), labels


def cmd_metrics(args: argparse.Namespace) -> int:
    from bilora.data.manifest import write_parquet_atomic
    from bilora.metrics import metrics_table

    spec = _spec(args.spec)
    scores, labels = read_scores(args.scores)
    table = metrics_table(scores, spec["threshold"])
    write_parquet_atomic(table, args.out, {"detector_labels": json.dumps(labels)})
    table.to_csv(Path(args.out).with_suffix(".csv"), index=False, float_format="%.6f")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd
    import pyarrow.parquet as pq

    from bilora.report.figures import heatmap, robustness_curves
    from bilora.report.tables import render_tables

    spec = _spec(args.spec)
    metrics = pd.read_parquet(args.metrics)
    meta = pq.read_schema(args.metrics).metadata or {}
    labels = json.loads(meta.get(b"detector_labels", b"{}"))
    note = spec["report"]["note"]
    render_tables(metrics, args.tables, spec["train"], spec["test"], labels, note)
    for det in metrics["detector"].unique():
        heatmap(metrics, det, spec["train"], spec["test"],
                f"{labels.get(det, det)}\n{note}", args.figures)
    robustness_curves(metrics, labels, args.figures, note)
    return 0


# -- config-level commands ----------------------------------------------------------------

def cmd_ls(args: argparse.Namespace) -> int:
    from bilora import config as C
    from bilora.detectors import KINDS

    cfg = C.load(args.configfile)
    print(f"run: {cfg['run']}   (results/{cfg['run']}/)")
    print("detectors:")
    for name, det in cfg["detectors"].items():
        print(f"  {name:12s} kind={det['kind']}")
    print("registered kinds: " + ", ".join(sorted(KINDS)))
    print("training generators: " + ", ".join(cfg["generators"]["train"]))
    print("test generators:     " + ", ".join(cfg["generators"]["test"]))
    for name, ds in cfg["data"]["datasets"].items():
        print(f"dataset {name}: source={ds['source']}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from bilora import config as C

    cfg = C.load(args.configfile)
    n = len(cfg["detectors"]) * len(cfg["generators"]["train"])
    print(f"{args.configfile or C.default_config_path()}: valid ({n} cells)")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from bilora import config as C
    from bilora.describe import describe

    cfg = C.load(args.configfile)
    if args.detector not in cfg["detectors"]:
        raise SystemExit(f"bilora: no detector {args.detector!r} in the config; "
                         f"known: {', '.join(cfg['detectors'])}")
    for line in describe(cfg["detectors"][args.detector]):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bilora.data.commands import register as register_data

    p = argparse.ArgumentParser(prog="bilora", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"bilora-bench {bilora.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def step(name: str, fn, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("--spec", required=True, help="JSON config slice of this job")
        s.add_argument("--threads", type=int, default=None, help="torch threads")
        s.add_argument("--quiet", action="store_true", help="no progress bars")
        s.add_argument("--num-workers", type=int, default=0,
                       help="DataLoader worker processes decoding images")
        s.set_defaults(func=fn)
        return s

    s = step("make-procedural", cmd_make_procedural, "write a procedural dataset and manifest")
    s.add_argument("--out", required=True, help="manifest path (<root>/<dataset>/manifest.parquet)")
    s = step("build-base", cmd_build_base, "build and save a tiny random BLIP-2 base model")
    s.add_argument("--out", required=True)
    s = step("train", cmd_train, "train one detector on one training generator")
    s.add_argument("--manifest", nargs="+", required=True)
    s.add_argument("--out", required=True, help="model folder")
    s.add_argument("--checkpoint-dir", required=True)
    s.add_argument("--base", default=None, help="built base model folder (tiny BLIP-2)")
    s = step("score", cmd_score, "score a trained detector on every test set x perturbation")
    s.add_argument("--model", required=True)
    s.add_argument("--manifest", nargs="+", required=True)
    s.add_argument("--train-generator", required=True)
    s.add_argument("--out", required=True)
    s = step("metrics", cmd_metrics, "metrics from per-image scores")
    s.add_argument("--scores", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s = step("report", cmd_report, "tables and figures from the metrics")
    s.add_argument("--metrics", required=True)
    s.add_argument("--tables", required=True)
    s.add_argument("--figures", required=True)

    for name, fn, help in (("ls", cmd_ls, "show detectors, kinds, generators, datasets"),
                           ("validate", cmd_validate, "validate a config against the schema")):
        s = sub.add_parser(name, help=help)
        s.add_argument("--configfile", default=None)
        s.set_defaults(func=fn)
    s = sub.add_parser("describe", help="model summary on the meta device (no weights)")
    s.add_argument("--configfile", default=None)
    s.add_argument("--detector", required=True)
    s.set_defaults(func=cmd_describe)
    register_data(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bilora`` console script."""
    from bilora.config import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    log.info("job: host=%s slurm_job_id=%s cpus=%s cuda_visible_devices=%s",
             os.uname().nodename, os.environ.get("SLURM_JOB_ID", "-"),
             os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count(),
             os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"bilora: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
