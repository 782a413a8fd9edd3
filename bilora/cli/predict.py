"""``bilora predict``: score any folders, image files or lists of images with a saved model
(:mod:`bilora.predict`)."""

from __future__ import annotations

import argparse


def cmd_predict(args: argparse.Namespace) -> int:
    from bilora.cli.steps import _setup
    from bilora.predict import check_out, run_predict

    check_out(args.out)  # a usage error before torch is set up
    if not args.inputs and not args.list:
        from bilora.errors import ConfigError

        raise ConfigError("nothing to score: give folders or image files, or --list FILE")
    _setup(args)
    run_predict(args.model, args.inputs, args.out, lists=args.list or [],
                threshold=args.threshold, batch_size=args.batch_size, device=args.device,
                num_workers=args.num_workers, progress=not args.quiet)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``predict`` to the ``bilora`` parser."""
    s = sub.add_parser(
        "predict", help="score folders or lists of images with a trained or imported model",
        description="Score every image of the folders (recursive; hidden files skipped), "
        "files and --list files with a saved model folder. Writes OUT (CSV or parquet by "
        "its suffix: path, sha1, p_fake, label, word), OUT.skipped.csv (files that do not "
        "decode, with the reason) and OUT.json (model, threshold and its source, "
        "preprocessing). Threshold: --threshold, else the model's threshold.json, else "
        "0.5. Exit 1, nothing written, when no file is an image that decodes.")
    s.add_argument("inputs", nargs="*", metavar="PATH", help="folders or image files")
    s.add_argument("--model", required=True, help="saved model folder (holds detector.json)")
    s.add_argument("--out", required=True, help="scores file: .csv or .parquet")
    s.add_argument("--list", action="append", metavar="FILE",
                   help="text file of image paths, one a line (relative to the file's "
                   "folder); may be repeated")
    s.add_argument("--threshold", type=float, default=None,
                   help="P(fake) at or above which an image is fake (default: the model's "
                   "threshold.json, else 0.5)")
    s.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default: the model's eval.batch_size, else 32)")
    s.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda:N")
    s.add_argument("--threads", type=int, default=None, help="torch threads")
    s.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader worker processes decoding images (and checking threads)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_predict)
