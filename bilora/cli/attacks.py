"""Attack steps: ``attack`` (one cell, white-box), ``transfer`` (one cell scores other cells'
adversarial images) and ``attack-report`` (tables and figure from their scores)."""

from __future__ import annotations

import argparse
import json
import logging

from bilora.cli.steps import _setup, _spec

log = logging.getLogger("bilora")


def cmd_attack(args: argparse.Namespace) -> int:
    from bilora.api.detector import load_detector
    from bilora.attacks.run import attack_cell
    from bilora.data.manifest import load_rows

    spec = _spec(args.spec)
    _setup(args)
    rows = load_rows(args.manifest, "test", spec["test_generators"])
    det = load_detector(args.model, spec["device"])
    scores = attack_cell(det, rows, spec, args.out, progress=not args.quiet)
    log.info("%d attack scores (%d conditions) written to %s", len(scores),
             scores[["attack", "eps", "post"]].drop_duplicates().shape[0], args.out)
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from bilora.api.detector import load_detector
    from bilora.attacks.run import source_fingerprints, transfer_cell
    from bilora.data.manifest import write_parquet_atomic

    spec = _spec(args.spec)
    _setup(args)
    if len(args.source_ids) != len(args.sources):
        raise SystemExit("--source-ids and --sources differ in length")
    sources = list(zip(args.source_ids, args.sources, strict=True))
    det = load_detector(args.model, spec["device"])
    scores = transfer_cell(det, sources, spec["batch_size"], progress=not args.quiet)
    scores.insert(0, "target", spec["detector_id"])
    write_parquet_atomic(scores, args.out, {
        "detector": spec["detector_id"],
        "sources": json.dumps(source_fingerprints(sources), sort_keys=True)})
    log.info("%d transfer scores from %d source cell(s) written to %s", len(scores),
             len(sources), args.out)
    return 0


def cmd_attack_report(args: argparse.Namespace) -> int:
    from bilora.report.attacks import render_attack_report

    spec = _spec(args.spec)
    paths = render_attack_report(spec, args.attacks, args.transfers, args.tables, args.figures)
    log.info("%d attack report files written", len(paths))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the attack steps to the ``bilora`` parser."""
    s = sub.add_parser("attack", help="attack one trained cell white-box (FGSM / PGD)")
    s.add_argument("--spec", required=True, help="JSON config slice of this job")
    s.add_argument("--model", required=True, help="the cell's model folder")
    s.add_argument("--manifest", nargs="+", required=True)
    s.add_argument("--out", required=True, help="attack folder (images/ and scores.parquet)")
    s.add_argument("--threads", type=int, default=None, help="torch threads")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_attack)

    s = sub.add_parser("transfer", help="score other cells' adversarial images with one cell")
    s.add_argument("--spec", required=True, help="JSON config slice of this job")
    s.add_argument("--model", required=True, help="the scoring cell's model folder")
    s.add_argument("--sources", nargs="+", required=True, help="the source cells' attack folders")
    s.add_argument("--source-ids", nargs="+", required=True, help="their detector ids, in order")
    s.add_argument("--out", required=True, help="transfer scores (parquet)")
    s.add_argument("--threads", type=int, default=None, help="torch threads")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_transfer)

    s = sub.add_parser("attack-report", help="attack tables and figure from attack scores")
    s.add_argument("--spec", required=True, help="JSON config slice of this job")
    s.add_argument("--attacks", nargs="*", default=[], help="attack folders of the cells")
    s.add_argument("--transfers", nargs="*", default=[], help="transfer score files")
    s.add_argument("--tables", required=True)
    s.add_argument("--figures", required=True)
    s.set_defaults(func=cmd_attack_report)
