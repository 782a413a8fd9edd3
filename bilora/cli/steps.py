"""The workflow steps of the ``bilora`` command: one subcommand per Snakemake rule.

Each step takes a ``--spec`` (the JSON config slice of one job, as the rule's params
carry it) and explicit input and output paths. ``--threads``, ``--quiet`` and
``--num-workers`` exist only on the steps that use them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from bilora.errors import ConfigError, DataError
from bilora.provenance import provenance

log = logging.getLogger("bilora")


def _spec(text: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--spec is not valid JSON: {exc}") from None


def _setup(args: argparse.Namespace) -> None:
    import torch

    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)
    # TF32 matmuls on a GPU for what stays float32 (BLIP-2's Q-Former); no effect on a CPU
    torch.set_float32_matmul_precision("high")


# -- data ---------------------------------------------------------------------------------

def cmd_make_procedural(args: argparse.Namespace) -> int:
    from bilora.data.procedural import ProceduralSpec, make_dataset

    spec = _spec(args.spec)
    ds = spec["dataset"]
    out = Path(args.out)
    make_dataset(ProceduralSpec(generators=ds["generators"],
                                image_size=ds["image_size"],
                                train_per_class=ds["train_per_class"],
                                test_per_class=ds["test_per_class"], seed=spec["seed"]),
                 out.parent, spec["max_rejected_fraction"], progress=not args.quiet,
                 workers=args.threads or 1)
    return 0


# -- models -------------------------------------------------------------------------------

def cmd_build_base(args: argparse.Namespace) -> int:
    from bilora.api.kinds import kind
    from bilora.api.plugins import resolve

    spec = _spec(args.spec)
    _setup(args)
    recipe = kind(spec["kind"]).base
    if recipe is None:
        raise ConfigError(f"detector kind {spec['kind']!r} has no base to build")
    resolve(recipe.build)(spec["base"], args.out, spec["seed"])
    log.info("%s base written to %s", spec["kind"], args.out)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bilora import feature_cache
    from bilora.api.detector import create_detector, resolve_device, save_detector
    from bilora.config import digest
    from bilora.data.dataset import ImageTable, load_rows
    from bilora.data.manifest import manifest_digest
    from bilora.training import CHECKPOINT, augments, train_detector

    spec = _spec(args.spec)
    _setup(args)
    rows = load_rows(args.manifest, "train", [spec["train_generator"]])
    data_digest = manifest_digest(rows)
    poison = spec["detector"]["train"].get("poison")
    stamped, poison_key = None, None
    if poison:  # a backdoor variant: some fakes get the trigger and the target label
        from bilora.data.trigger import poison_rows

        n_fake = int((rows["label"].astype(int) == 1).sum())
        rows, stamped = poison_rows(rows, poison, spec["seed"])
        poison_key = {**poison, "stamped": rows["sha1"][stamped].astype(str).tolist()}
        log.info("poisoning: %d of %d training images (of %d fakes) stamped with the "
                 "trigger and labelled %s (fraction %g)", int(stamped.sum()), len(rows),
                 n_fake, poison["target"], poison["fraction"])
    try:
        det = create_detector(spec["detector"], seed=spec["seed"], base_dir=args.base)
    except ConfigError as exc:
        raise ConfigError(f"detectors.{spec['detector_id']}: {exc}") from None
    det.to(resolve_device(spec["device"]))
    counts = det.parameter_counts()
    log.info("%s: %d images of %s; parameters %d, trainable %d", spec["detector_id"], len(rows),
             spec["train_generator"], counts["total"], counts["trainable"])
    images = ImageTable(rows, det.input_size, jpeg_quality=spec["jpeg_quality"],
                        fit=det.input_fit, trigger=poison["trigger"] if poison else None,
                        stamped=stamped)
    plan = feature_cache.prepare(det, images, rows, spec["jpeg_quality"],
                                 Path(args.cache_dir or Path(args.out).parent / "features"),
                                 augments(det.cfg["train"]), args.num_workers,
                                 progress=not args.quiet, poison=poison_key)
    history = train_detector(det, plan.dataset, det.cfg["train"], spec["seed"],
                             args.checkpoint_dir, digest([spec, data_digest, plan.stage], 40),
                             num_workers=args.num_workers, progress=not args.quiet,
                             loss_fn=plan.loss_fn)
    save_detector(det, args.out, provenance(spec, data_manifest_sha1=data_digest,
                                            history=json.dumps(history),
                                            feature_cache=plan.note))
    # trained and saved: a later forced rerun (new code, new base) must train again, and a
    # finished cell leaves no checkpoint folder behind
    (Path(args.checkpoint_dir) / CHECKPOINT).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        Path(args.checkpoint_dir).rmdir()
    if plan.file is not None and not args.cache_dir:  # a cell's own cache served its purpose
        shutil.rmtree(plan.file.parent, ignore_errors=True)
    return 0


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from bilora.checkpoints import import_checkpoint

    spec = _spec(args.spec)
    _setup(args)
    import_checkpoint(spec, args.source, args.out, args.base)
    log.info("%s: %s imported into %s", spec["detector_id"], args.source, args.out)
    return 0


def _parts(scores: str | Path) -> Path:
    """The folder of a cell's finished conditions, beside its scores file."""
    return Path(f"{scores}.parts")


def _cell_fingerprint(spec: dict[str, Any], model: str | Path, rows) -> str:
    """What a cell's finished conditions are valid for: its score spec, the trained model's
    files and the test rows (the same in cell and group scoring)."""
    from bilora.config import digest
    from bilora.data.manifest import manifest_digest
    from bilora.model_files import model_fingerprint

    return digest([spec, model_fingerprint(model), manifest_digest(rows)], 40)


def _write_scores(scores, args: argparse.Namespace, spec: dict[str, Any], rows,
                  preprocessing: dict[str, Any] | None = None) -> None:
    """A cell's scores file with its provenance; ``preprocessing`` (the loaded detector's)
    defaults to what the model's detector.json records (absent in models saved before it)."""
    from bilora.data.manifest import manifest_digest, write_parquet_atomic
    from bilora.model_files import read_detector_meta

    meta = read_detector_meta(args.model)
    preprocessing = preprocessing or meta.get("preprocessing")
    extra = {"preprocessing": json.dumps(preprocessing, sort_keys=True)} if preprocessing else {}
    write_parquet_atomic(scores, args.out, provenance(
        spec, detector=spec["detector_id"], train=args.train_generator, seed=args.seed,
        data_manifest_sha1=manifest_digest(rows),
        model_config_hash=meta["provenance"]["config_hash"],
        parameters=json.dumps(meta["parameters"]), **extra))
    log.info("%d scores written to %s", len(scores), args.out)


def cmd_score(args: argparse.Namespace) -> int:
    from bilora.api.detector import load_detector
    from bilora.data.dataset import load_rows
    from bilora.data.perturbations import conditions
    from bilora.evaluation import score_table

    spec = _spec(args.spec)
    _setup(args)
    rows = load_rows(args.manifest, "test", spec["test_generators"])
    det = load_detector(args.model, spec["device"])
    parts = _parts(args.out)
    scores = score_table(det, rows, conditions(spec["perturbations"]), spec["seed"],
                         spec["eval"]["batch_size"], args.num_workers,
                         progress=not args.quiet, protocol=spec["protocol"],
                         jpeg_quality=spec["jpeg_quality"], parts_dir=parts,
                         fingerprint=_cell_fingerprint(spec, args.model, rows),
                         trigger=spec.get("trigger"))
    _write_scores(scores, args, spec, rows, det.preprocessing())
    shutil.rmtree(parts, ignore_errors=True)  # the finished conditions served their purpose
    return 0


def cmd_score_group(args: argparse.Namespace) -> int:
    from bilora.api.detector import resolve_device
    from bilora.api.kinds import kind as kind_spec
    from bilora.api.plugins import resolve
    from bilora.atomic import write_json
    from bilora.data.dataset import load_rows
    from bilora.evaluation import score_group

    spec = _spec(args.spec)
    _setup(args)
    rows = load_rows(args.manifest, "test", spec["test_generators"])
    cells = [tuple(c) for c in spec["cells"]]
    if len(cells) != len(args.models):
        raise ConfigError(f"--models gives {len(args.models)} models for {len(cells)} cells")
    from bilora.model_files import read_detector_meta

    configs = [read_detector_meta(m)["config"] for m in args.models]
    scorer = kind_spec(configs[0]["kind"]).group_scorer
    if scorer is None:
        raise ConfigError(f"detector kind {configs[0]['kind']!r} scores no groups")
    group = resolve(scorer)(args.models, configs, resolve_device(spec["device"]))
    parts = [(_parts(Path(m).parent / "scores.parquet"),
              _cell_fingerprint(spec["members"][det], m, rows))
             for (det, _, _), m in zip(cells, args.models, strict=True)]
    done = []
    for kind, level in spec["conditions"]:
        scored = score_group(group, rows, (kind, level), parts, spec["seed"], spec["protocol"],
                             spec["batch_size"], args.num_workers, spec["jpeg_quality"],
                             progress=not args.quiet, trigger=spec.get("trigger"))
        log.info("%s=%s: %d adapters scored, %d reused", kind, level, sum(scored),
                 len(scored) - sum(scored))
        done.append({"condition": [kind, level], "scored": scored})
    write_json(args.out, {"conditions": done, "cells": [
        {"cell": list(c), "parts": str(p), "fingerprint": fp}
        for c, (p, fp) in zip(cells, parts, strict=True)]})
    return 0


def cmd_gather_scores(args: argparse.Namespace) -> int:
    import pandas as pd

    from bilora.config import condition_name
    from bilora.data.manifest import load_rows
    from bilora.data.perturbations import conditions
    from bilora.score_parts import SCORE_COLUMNS, read_part

    spec = _spec(args.spec)
    rows = load_rows(args.manifest, "test", spec["test_generators"])
    fingerprint = _cell_fingerprint(spec, args.model, rows)
    frames = []
    for kind, level in conditions(spec["perturbations"]):
        name = condition_name(kind, level)
        frame = read_part(_parts(args.out) / f"{name}.parquet", f"{fingerprint}/{name}")
        if frame is None:
            raise DataError(f"{_parts(args.out) / name}.parquet is missing or was scored for "
                            f"another model or setting; rerun its group's job "
                            f"(snakemake --forcerun score_group {args.out})")
        frames.append(frame)
    _write_scores(pd.concat(frames, ignore_index=True)[SCORE_COLUMNS], args, spec, rows)
    return 0


# -- metrics and report -------------------------------------------------------------------

def cmd_collect_warnings(args: argparse.Namespace) -> int:
    from bilora.atomic import write_json
    from bilora.run_warnings import collect

    spec = _spec(args.spec)
    found = collect(args.manifests, args.digests, args.models, spec["max_rejected_fraction"])
    for w in found:
        log.warning("%s: %s", w["source"], w["message"])
    write_json(args.out, found)
    log.info("%d warning(s) written to %s", len(found), args.out)
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from bilora.metrics import run_metrics

    spec = _spec(args.spec)
    table = run_metrics(args.scores, args.out, spec["threshold"], resamples=spec["resamples"],
                        confidence=spec["confidence"], seed=spec["seed"])
    log.info("%d groups from %d score files written to %s", len(table), len(args.scores),
             args.out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from bilora.report import render_report

    spec = _spec(args.spec)
    paths = render_report(args.metrics, args.bootstrap, spec, args.tables, args.figures,
                          manifests=args.manifests, scores=args.scores,
                          warnings_path=args.warnings)
    log.info("%d report files written", len(paths))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the workflow steps to the ``bilora`` parser."""

    def step(name: str, fn, help: str, threads: bool = False, quiet: bool = False,
             workers: bool = False) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("--spec", required=True, help="JSON config slice of this job")
        if threads:
            s.add_argument("--threads", type=int, default=None, help="torch threads")
        if quiet:
            s.add_argument("--quiet", action="store_true", help="no progress bars")
        if workers:
            s.add_argument("--num-workers", type=int, default=0,
                           help="DataLoader worker processes decoding images")
        s.set_defaults(func=fn)
        return s

    s = step("make-procedural", cmd_make_procedural, "write a procedural dataset and manifest",
             threads=True, quiet=True)
    s.add_argument("--out", required=True, help="manifest path (<root>/<dataset>/manifest.parquet)")
    s = step("build-base", cmd_build_base, "build and save the tiny random base model of a "
             "detector kind", threads=True)
    s.add_argument("--out", required=True)
    s = step("train", cmd_train, "train one detector on one training generator",
             threads=True, quiet=True, workers=True)
    s.add_argument("--manifest", nargs="+", required=True)
    s.add_argument("--out", required=True, help="model folder")
    s.add_argument("--checkpoint-dir", required=True)
    s.add_argument("--base", default=None, help="built base model folder (tiny BLIP-2)")
    s.add_argument("--cache-dir", default=None,
                   help="shared folder of frozen-feature caches (default: the cell's own)")
    s = step("import-checkpoint", cmd_import_checkpoint, "import a released checkpoint as one "
             "cell's model (instead of training it)")
    s.add_argument("--source", required=True, help="the checkpoint: a local folder or a hub id")
    s.add_argument("--out", required=True, help="model folder")
    s.add_argument("--base", default=None, help="built base model folder (tiny BLIP-2)")

    def cell_scores(s: argparse.ArgumentParser) -> None:
        """The arguments of a step that writes one cell's scores file."""
        s.add_argument("--model", required=True)
        s.add_argument("--manifest", nargs="+", required=True)
        s.add_argument("--train-generator", required=True)
        s.add_argument("--seed", required=True, type=int, help="the cell's training seed")
        s.add_argument("--out", required=True)

    cell_scores(step("score", cmd_score, "score a trained detector on every test set x "
                     "perturbation", threads=True, quiet=True, workers=True))
    s = step("score-group", cmd_score_group, "score a group of cells that share a frozen "
             "base under one condition, with one image pass", threads=True, quiet=True,
             workers=True)
    s.add_argument("--models", nargs="+", required=True, help="the group's trained models")
    s.add_argument("--manifest", nargs="+", required=True)
    s.add_argument("--out", required=True, help="marker of the finished conditions (JSON)")
    cell_scores(step("gather-scores", cmd_gather_scores, "a cell's scores file from the "
                     "finished conditions its group scored"))
    s = step("collect-warnings", cmd_collect_warnings, "gather the run's warnings (digests, "
             "rejected images, short sets, training fallbacks)")
    s.add_argument("--manifests", nargs="*", default=[])
    s.add_argument("--digests", nargs="*", default=[])
    s.add_argument("--models", nargs="*", default=[])
    s.add_argument("--out", required=True)
    s = step("metrics", cmd_metrics, "metrics from per-image scores")
    s.add_argument("--scores", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s = step("report", cmd_report, "tables and figures from the metrics")
    s.add_argument("--metrics", required=True)
    s.add_argument("--bootstrap", required=True, help="bootstrap draws of the metrics step")
    s.add_argument("--tables", required=True)
    s.add_argument("--figures", required=True)
    s.add_argument("--manifests", nargs="*", default=[], help="manifests (for the data card)")
    s.add_argument("--scores", nargs="*", default=[], help="score files (metadata only)")
    s.add_argument("--warnings", default=None, help="JSON list of {source, message, affects}")
