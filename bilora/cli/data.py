"""`bilora` subcommands for the real datasets: fetch, extract, rebuild, organize, check.

Every command takes explicit arguments (the Snakemake rules pass config values; nothing
here reads the config) and leaves a file written atomically that a rule can name as
its output:

=====================  ==========================================================
fetch-zenodo           ``<dest>/fetch.done.json`` (and the lock file)
extract                ``<dest>/.bilora-extract/<archive name>.done.json`` per archive,
                       and ``--done PATH`` if given
rebuild-lsun-real      ``<dest>/lsun_real.done.json``, copied to ``--done PATH`` if given
organize               ``--out`` (the manifest) and ``rejects.csv`` beside it
tree-digest            ``--out PATH`` if given (the digest; on a mismatch only with
                       ``--warn-only``, then followed by ``MISMATCH``)
=====================  ==========================================================

A failing command prints one line naming the file, URL or key at fault and exits 1
(the convention of :mod:`bilora.cli`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bilora.api.layouts import LAYOUTS
from bilora.atomic import write_text
from bilora.data.ricker import RICKER_GENERATORS

DIGEST_ALIASES = {"ricker-test": "test", "ricker-train": "train", "ricker-val": "val"}


def _fetch(args: argparse.Namespace) -> int:
    from bilora.data.fetch import FetchError, fetch_zenodo

    extra = None
    if args.extra_files:
        try:
            extra = json.loads(args.extra_files)
        except ValueError as exc:
            raise FetchError(f"--extra-files: not JSON ({exc})") from None
    paths = fetch_zenodo(args.base_url, args.record, args.lock, args.dest,
                         archives_dir=args.archives_dir, patterns=args.files,
                         retries=args.retries, backoff_factor=args.backoff_factor,
                         verify_existing=args.verify_existing, progress=not args.quiet,
                         extra_files=extra)
    for p in paths:
        print(p)
    return 0


def _archives_from_fetch(marker: str) -> list[str]:
    """The zip/tar files listed in a fetch-zenodo marker (other files are skipped)."""
    from bilora.data.archives import ExtractError, archive_kind

    try:
        files = json.loads(Path(marker).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExtractError(f"cannot read the fetch marker {marker}: {exc}") from exc
    out = []
    for f in files:
        try:
            archive_kind(f["path"])
        except ExtractError:
            print(f"skipped (not a zip or tar archive): {f['path']}")
            continue
        out.append(f["path"])
    return out


def _extract(args: argparse.Namespace) -> int:
    from bilora.data.archives import ExtractError, extract_archive

    archives = list(args.archive or [])
    if args.from_fetch:
        archives += _archives_from_fetch(args.from_fetch)
    if not archives:
        raise ExtractError("no archives to extract (give --archive or --from-fetch)")
    done = []
    for archive in archives:
        extracted = extract_archive(archive, args.dest, force=args.force)
        print(f"{'extracted' if extracted else 'already extracted'}: {archive}")
        done.append(str(Path(archive).resolve()))
    if args.done:
        write_text(args.done, json.dumps({"dest": str(Path(args.dest).resolve()),
                                            "archives": done}, indent=1) + "\n")
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    from bilora.data.lsun import rebuild_lsun_real

    n = rebuild_lsun_real(args.lmdb, args.dest, args.generators, skip=args.skip,
                          train_per_generator=args.train_per_generator,
                          val_per_generator=args.val_per_generator, size=args.size,
                          extra=args.extra_generators,
                          workers=args.workers, progress=not args.quiet)
    print(f"wrote {n} PNGs under {args.dest}")
    if args.done:
        from bilora.data.lsun import DONE_NAME

        write_text(args.done, (Path(args.dest) / DONE_NAME).read_text())
    return 0




def layout_params(layout: str, pairs: list[str] | None) -> dict[str, object]:
    """``KEY=VALUE`` pairs of ``organize --param``: VALUE is JSON, else a plain string;
    KEY must be one of the layout's params that has no flag of its own."""
    import json

    from bilora.api.layouts import ORGANIZE_OPTIONS

    taken = [k for k in LAYOUTS.get(layout).params if k not in ORGANIZE_OPTIONS]
    out: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in taken:
            raise SystemExit(f"bilora organize: --param {pair!r}: the {layout} layout takes "
                             f"KEY=VALUE with KEY one of {taken or 'nothing'}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _organize(args: argparse.Namespace) -> int:
    from bilora.data.folders import parse_split_map
    from bilora.data.local_sources import organize

    summary = organize(args.layout, args.source, args.dataset_dir, args.max_rejected_fraction,
                       out=args.out, generator=args.generator,
                       split_map=parse_split_map(args.split_map), generators=args.generators,
                       splits=args.splits, progress=not args.quiet,
                       test_reals_from=args.test_reals_from, train_reals_dir=args.train_reals_dir,
                       train_per_class=args.train_per_class,
                       test_fakes_per_generator=args.test_fakes_per_generator, seed=args.seed,
                       cap_test_reals=args.cap_test_reals, workers=args.workers,
                       **layout_params(args.layout, args.param))
    print(f"{summary.rows} images in {args.out}" + (
        f" ({summary.rejected} rejected: {summary.rejects_path})" if summary.rejected else ""))
    return 0


def _digest(args: argparse.Namespace) -> int:
    from bilora.data.integrity import RICKER_DIGESTS, IntegrityError, digest_mismatch, tree_digest

    if not os.path.isdir(args.dir):
        raise IntegrityError(f"not a folder: {args.dir}")

    digest, status = tree_digest(args.dir), ""  # hashed once, checked or not
    if args.expect:
        expect = RICKER_DIGESTS.get(DIGEST_ALIASES.get(args.expect, ""), args.expect)
        problem = digest_mismatch(args.dir, digest, expect)
        if problem and not args.warn_only:
            raise IntegrityError(problem)
        if problem:
            print(f"bilora tree-digest: warning: {problem}", file=sys.stderr)
            status = f"  MISMATCH expected {expect}"
    print(f"{digest}  {args.dir}")
    if args.out:
        write_text(args.out, digest + status + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the real-data subcommands to the `bilora` parser (each sets ``func``)."""
    p = sub.add_parser("fetch-zenodo", help="download and verify a Zenodo record's files",
                       description="Pin the record's listing in --lock (read once), then "
                       "download each file into --dest (resumed, retried, md5-checked, "
                       "atomic), or verify the files already in --archives-dir and link them.")
    p.add_argument("--base-url", default="https://zenodo.org")
    p.add_argument("--record", required=True, help="Zenodo record id, e.g. 7528113")
    p.add_argument("--lock", required=True, help="lock file pinning names, sizes, md5, URLs")
    p.add_argument("--dest", required=True, help="folder for the downloaded files")
    p.add_argument("--archives-dir", help="folder already holding the files: verify, no download")
    p.add_argument("--files", nargs="+", metavar="PATTERN", help="fnmatch patterns of files")
    p.add_argument("--extra-files", metavar="JSON",
                   help='files beside the record, fetched and pinned alike: '
                   '{"<name>": {"url": ..., "md5": ..., "size": <bytes> or null}}')
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--backoff-factor", type=float, default=1.0,
                   help="seconds; waits grow as factor * 2**n")
    p.add_argument("--verify-existing", action="store_true",
                   help="re-hash files already under their final name")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("extract", help="safely extract zip/tar archives into a folder")
    p.add_argument("--archive", nargs="+", help="archive files")
    p.add_argument("--from-fetch", metavar="FETCH_DONE_JSON",
                   help="also extract the zip/tar files a fetch-zenodo marker lists")
    p.add_argument("--dest", required=True)
    p.add_argument("--force", action="store_true", help="extract even if marked done")
    p.add_argument("--done", help="marker file to write when all archives are extracted")
    p.set_defaults(func=_extract)

    p = sub.add_parser("rebuild-lsun-real",
                       help="rebuild Ricker et al.'s real train/val halves from the LSUN LMDB")
    p.add_argument("--lmdb", required=True, help="LSUN bedroom_train_lmdb folder")
    p.add_argument("--dest", required=True,
                   help="the diffusion_model_deepfakes_lsun_bedroom folder")
    p.add_argument("--skip", type=int, default=10_000)
    p.add_argument("--train-per-generator", type=int, default=39_000)
    p.add_argument("--val-per-generator", type=int, default=1_000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--generators", nargs="+", default=list(RICKER_GENERATORS),
                   help="in the order the records are handed out")
    p.add_argument("--extra-generators", nargs="*", default=[],
                   help="generators outside Ricker's set that get a further train block of "
                   "reals, in this order, after every Ricker block (<dest>/../lsun_extra)")
    p.add_argument("--workers", type=int, default=1, help="processes encoding PNGs")
    p.add_argument("--done", help="also copy the completion marker to this path")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_rebuild)

    p = sub.add_parser("organize", help="map a folder with its layout: the manifest")
    p.add_argument("--layout", required=True, choices=LAYOUTS.names(),
                   help="a registered layout (bilora/data/layouts/)")
    p.add_argument("--source", help="the source folder (a layout with a hub key may read "
                   "its hub dataset from the hub cache instead: --param hub=ORG/NAME)")
    p.add_argument("--dataset-dir", required=True,
                   help="manifest paths are relative to it when inside it")
    p.add_argument("--generator", help="the one generator of the folder (for layouts that take it)")
    p.add_argument("--split-map", help="source=target pairs, e.g. train=train,val=test "
                   "(for layouts that take it)")
    p.add_argument("--generators", nargs="+",
                   help="generators to include (for layouts that take them)")
    p.add_argument("--splits", nargs="+",
                   help="splits to include (for layouts that take them; default all)")
    p.add_argument("--max-rejected-fraction", type=float, required=True)
    p.add_argument("--test-reals-from", metavar="MANIFEST",
                   help="score every test generator against this manifest's shared real set")
    p.add_argument("--train-reals-dir", metavar="DIR",
                   help="train reals from a further LSUN block: DIR/train/<G>/0_real")
    p.add_argument("--train-per-class", type=int, help="cap of train images per class")
    p.add_argument("--test-fakes-per-generator", type=int, help="cap of test fakes per generator")
    p.add_argument("--seed", type=int, default=0, help="seed of the capped samples")
    p.add_argument("--cap-test-reals", action="store_true",
                   help="cap the dataset's own test reals like its fakes (not a shared set)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="a layout's own key (its dataset-section key of that name; VALUE is "
                   "JSON or a string), e.g. --param split=val; repeatable")
    p.add_argument("--out", required=True, help="manifest parquet to write")
    p.add_argument("--workers", type=int, default=1,
                   help="processes that read, hash and decode the images (default 1)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_organize)

    p = sub.add_parser("tree-digest", help="Ricker et al.'s folder digest (LC_ALL=C order)")
    p.add_argument("dir")
    p.add_argument("--expect", help="hex digest, or ricker-test / ricker-train / ricker-val")
    p.add_argument("--out", help="file to write the digest to when it matches")
    p.add_argument("--warn-only", action="store_true",
                   help="on mismatch warn, exit 0, and write the digest marked MISMATCH")
    p.set_defaults(func=_digest)
