"""Benchmark: ``bilora organize`` on a GenImage-sized tree, beside ``sha1sum`` and ``cat``.

Writes a synthetic tree of ``--files`` tiny images (a few hundred bytes each: a handful
of encoded 16x16 images, each file made distinct by a unique PNG ``tEXt`` chunk or JPEG
comment, so every file decodes and has its own sha1) in GenImage's published layout
(``<Generator>/<subset>/{train,val}/{ai,nature}``: PNG fakes, JPEG reals), then, on the
warm page cache (a ``cat`` pass runs first):

* ``cat`` and ``sha1sum`` over the same file list (``xargs -0``), timed;
* ``bilora organize --layout genimage --generators <all eight>`` in a child process:
  wall time, files/s, MB/s read and hashed, and its peak RSS (the child's own high-water
  mark, ``VmHWM``: ``getrusage`` would carry this script's over ``exec``); and the same
  on the first two generators only (a quarter of the files), so the RSS growth per file
  shows whether memory stays flat;
* the same with ``--workers`` (default: the CPU count);
* the decode cost of one full-size image of each kind (a 512x512 PNG, a 500x375 JPEG),
  for the projection to the full GenImage.

Prints the ratio of organize's throughput (files/s) to sha1sum's against the target 0.7
and the peak RSS against 1 GiB (PASS or MISS), and projects both to GenImage in full.
Usage:

    python benchmarks/organize_scale.py [--files 200000] [--dir TMP] [--keep] [--out TXT]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bilora.data.layouts.genimage import PUBLISHED  # noqa: E402 - after the checkout is on the path
from bilora.data.manifest import CHUNK_ROWS  # noqa: E402

# GenImage in full (Zhu et al., 2023): 1,350,000 fakes and 1,281,167 ImageNet reals (each
# generator folder holds its own reals): ~1.35M image pairs, ~2.63M files
GENIMAGE_FILES = 1_350_000 + 1_281_167
ASSUMED_KB = 250.0  # assumed mean GenImage file size (KB), for the projection only
RATIO_TARGET = 0.7
RSS_TARGET = 2**30
MIB = 2**20


def _png_variant(base: bytes, tag: int) -> bytes:
    """``base`` (a PNG) with a unique tEXt chunk before IEND."""
    body = b"tEXt" + b"bench\0" + str(tag).encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return base[:-12] + chunk + base[-12:]


def _jpeg_variant(base: bytes, tag: int) -> bytes:
    """``base`` (a JPEG) with a unique COM segment after SOI."""
    text = str(tag).encode()
    return base[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + base[2:]


def _bases(kinds: int = 4) -> tuple[list[bytes], list[bytes]]:
    rng = np.random.default_rng(0)
    pngs, jpegs = [], []
    for _ in range(kinds):
        img = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        for fmt, out in (("PNG", pngs), ("JPEG", jpegs)):
            buf = io.BytesIO()
            img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            out.append(buf.getvalue())
    return pngs, jpegs


def write_tree(root: Path, files: int) -> tuple[list[str], int]:
    """The synthetic GenImage root: ``files`` images spread evenly over the eight
    generators x {train, val} x {ai, nature}; returns (paths in listing order, bytes)."""
    pngs, jpegs = _bases()
    leaves = [(rel, split, kind) for rel in PUBLISHED.values() for split in ("train", "val")
              for kind in ("ai", "nature")]
    paths, total, tag = [], 0, 0
    for j, (rel, split, kind) in enumerate(leaves):
        folder = root / rel / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        n = files // len(leaves) + (1 if j < files % len(leaves) else 0)
        for i in range(n):
            tag += 1
            if kind == "ai":
                name, data = f"{i:07d}_fake.png", _png_variant(pngs[i % len(pngs)], tag)
            else:
                name, data = f"n{i:08d}.JPEG", _jpeg_variant(jpegs[i % len(jpegs)], tag)
            path = folder / name
            path.write_bytes(data)
            paths.append(str(path))
            total += len(data)
    return paths, total


def timed_shell(cmd: str) -> float:
    """Wall seconds of a shell command (which must succeed)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True)
    return time.perf_counter() - t0


CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from bilora.cli import main
t0 = time.perf_counter()
rc = main({args!r})
wall = time.perf_counter() - t0
try:  # this process's own peak: ru_maxrss would carry the parent's over exec (Linux)
    peak = [int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmHWM:")][0]
except (OSError, IndexError):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"rc": rc, "wall": wall, "maxrss": peak}}))
"""


def organize_child(source: Path, dataset: Path, generators: list[str], workers: int = 1
                   ) -> dict:
    """``bilora organize`` in a fresh Python: its wall time, peak RSS (VmHWM of that process;
    with workers, of the parent alone) and output line."""
    args = ["organize", "--layout", "genimage", "--source", str(source), "--dataset-dir",
            str(dataset), "--generators", *generators, "--max-rejected-fraction", "0",
            "--out", str(dataset / "manifest.parquet"), "--quiet", "--workers", str(workers)]
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), args=args)],
                         capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    if result["rc"] != 0:
        raise SystemExit(f"organize failed: {out.stdout}{out.stderr}")
    result["said"] = lines[-2]
    return result


def decode_cost(reps: int = 20) -> dict[str, tuple[float, int]]:
    """Seconds to read, hash and decode one full-size image of each kind, and its bytes."""
    from bilora.data.manifest import inspect_image

    rng = np.random.default_rng(1)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fmt, size in (("PNG 512x512", "PNG", (512, 512)),
                                ("JPEG 500x375", "JPEG", (500, 375))):
            # smooth content with some noise: closer to photos than pure noise
            y, x = np.mgrid[0:size[1], 0:size[0]]
            base = np.stack([(x * 255 // size[0]), (y * 255 // size[1]),
                             ((x + y) * 127 // sum(size))], -1)
            img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            path = Path(tmp) / f"x.{fmt.lower()}"
            Image.fromarray(img).save(path, format=fmt,
                                      **({"quality": 90} if fmt == "JPEG" else {}))
            inspect_image(path)
            t0 = time.perf_counter()
            for _ in range(reps):
                inspect_image(path)
            out[name] = ((time.perf_counter() - t0) / reps, path.stat().st_size)
    return out


def sha1_mb_per_s(mib: int = 64) -> float:
    """hashlib's sha1 throughput (MB/s) over an in-memory buffer."""
    import hashlib

    data = os.urandom(mib * MIB)
    t0 = time.perf_counter()
    hashlib.sha1(data).digest()
    return mib / (time.perf_counter() - t0)


def verdict(ok: bool, label: str) -> str:
    return f"{'PASS' if ok else 'MISS'}  {label}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=200_000)
    p.add_argument("--dir", help="folder for the synthetic tree (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the tree and manifests")
    p.add_argument("--out", help="also write the printed figures to this file")
    p.add_argument("--workers", type=int, default=0,
                   help="processes for the parallel organize run (default: CPU count)")
    p.add_argument("--assumed-kb", type=float, default=ASSUMED_KB,
                   help="mean GenImage file size assumed by the projection (KB)")
    args = p.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="organize_scale_", dir=args.dir))
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    try:
        t0 = time.perf_counter()
        paths, nbytes = write_tree(base / "GenImage", args.files)
        write_s = time.perf_counter() - t0
        listing = base / "files.lst"
        listing.write_bytes(b"".join(p.encode() + b"\0" for p in paths))
        n = len(paths)
        say(f"organize_scale: {n} files, {nbytes / MIB:.1f} MiB ({nbytes / n:.0f} B per "
            f"file), GenImage layout (8 generators x train/val x ai/nature), "
            f"written in {write_s:.1f} s; {os.cpu_count()} CPUs")
        cat_s = timed_shell(f"xargs -0 cat < {listing} > /dev/null")  # warms the cache
        cat_s = timed_shell(f"xargs -0 cat < {listing} > /dev/null")
        sha_s = timed_shell(f"xargs -0 sha1sum < {listing} > /dev/null")
        quarter = organize_child(base / "GenImage", base / "quarter" / "gi",
                                 list(PUBLISHED)[:2])
        full = organize_child(base / "GenImage", base / "full" / "gi", list(PUBLISHED))
        workers = args.workers or os.cpu_count() or 1
        par = organize_child(base / "GenImage", base / "par" / "gi", list(PUBLISHED), workers)
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(base / "full" / "gi" / "manifest.parquet").metadata.num_rows
        q_rows = pq.ParquetFile(base / "quarter" / "gi" / "manifest.parquet").metadata.num_rows
        org_fps = n / full["wall"]
        sha_fps = n / sha_s
        say(f"cat          {cat_s:8.2f} s  {n / cat_s:10.0f} files/s  "
            f"{nbytes / MIB / cat_s:8.1f} MB/s")
        say(f"sha1sum      {sha_s:8.2f} s  {sha_fps:10.0f} files/s  "
            f"{nbytes / MIB / sha_s:8.1f} MB/s")
        say(f"organize     {full['wall']:8.2f} s  {org_fps:10.0f} files/s  "
            f"{nbytes / MIB / full['wall']:8.1f} MB/s  (read, sha1, full decode)")
        say(f"organize -j{workers:<3d}{par['wall']:8.2f} s  {n / par['wall']:10.0f} files/s  "
            f"{nbytes / MIB / par['wall']:8.1f} MB/s  (--workers {workers})")
        say(f"manifest rows: {rows} of {n} files ({full['said']})")
        say(f"peak RSS organize: {full['maxrss'] / MIB:.1f} MiB at {rows} files, "
            f"{quarter['maxrss'] / MIB:.1f} MiB at {q_rows} files")
        if q_rows >= 2 * CHUNK_ROWS:  # both runs past the first chunk's buffer
            slope = max(0.0, (full["maxrss"] - quarter["maxrss"]) / max(rows - q_rows, 1))
            rss_full = full["maxrss"] + slope * max(GENIMAGE_FILES - rows, 0)
            say(f"RSS growth: {slope:.0f} B per file (from the two runs); projected at "
                f"{GENIMAGE_FILES} files: {rss_full / MIB:.0f} MiB")
        else:
            rss_full = full["maxrss"]
            say(f"RSS growth: not estimated (the quarter run needs {2 * CHUNK_ROWS} files or "
                "more, past the first chunk's buffer)")
        ratio = org_fps / sha_fps
        say(verdict(ratio >= RATIO_TARGET, f"organize / sha1sum throughput {ratio:.3f} "
                                           f">= {RATIO_TARGET} (files/s, one process)"))
        ratio_par = n / par["wall"] / sha_fps
        say(verdict(ratio_par >= RATIO_TARGET, f"organize / sha1sum throughput "
                    f"{ratio_par:.3f} >= {RATIO_TARGET} (files/s, --workers {workers})"))
        projected = (f", {rss_full / MIB:.0f} MiB projected at {GENIMAGE_FILES} files"
                     if q_rows >= 2 * CHUNK_ROWS else "")
        say(verdict(full["maxrss"] <= RSS_TARGET and rss_full <= RSS_TARGET,
                    f"peak RSS {full['maxrss'] / MIB:.0f} MiB here{projected} "
                    f"<= {RSS_TARGET // MIB} MiB"))
        costs = decode_cost()
        per_file = full["wall"] / n
        for name, (s, size) in costs.items():
            say(f"full-size image: {name}, {size / 1024:.0f} KB: {s * 1000:.2f} ms to read, "
                "hash and decode")
        mean_decode = sum(s for s, _ in costs.values()) / len(costs)  # half PNG, half JPEG
        small_min = GENIMAGE_FILES * per_file / 60
        full_min = GENIMAGE_FILES * (per_file + mean_decode) / 60
        speedup = full["wall"] / par["wall"]
        gb = GENIMAGE_FILES * args.assumed_kb * 1024 / 1e9
        hash_mbs = sha1_mb_per_s()
        hash_min = GENIMAGE_FILES * args.assumed_kb * 1024 / (hash_mbs * MIB) / 60
        say(f"projection to GenImage in full ({GENIMAGE_FILES} files; assumed mean "
            f"{args.assumed_kb} KB per file, ~{gb:.0f} GB), one process:")
        say(f"  at this benchmark's per-file cost ({per_file * 1e6:.0f} us, tiny files): "
            f"{small_min:.1f} min (a lower bound)")
        say(f"  adding the measured decode of full-size images (half PNG, half JPEG, "
            f"{mean_decode * 1000:.1f} ms mean): {full_min:.0f} min; with --workers "
            f"{workers} (x{speedup:.2f} measured here): {full_min / speedup:.0f} min")
        say(f"  of which sha1 alone over ~{gb:.0f} GB at {hash_mbs:.0f} MB/s (hashlib, in "
            f"memory; disk reads not included): {hash_min:.1f} min")
    finally:
        if args.keep:
            print(f"kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
