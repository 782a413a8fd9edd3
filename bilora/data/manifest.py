"""Manifests: the one table per dataset that everything downstream reads.

A manifest row describes one image: ``path`` (relative to the dataset folder,
or absolute for images left where the user keeps them), ``label`` (0 real,
1 fake), ``generator``, ``split`` and ``sha1`` of the file's bytes. Building a
manifest decodes every image; files that fail are listed with their reason in
``rejects.csv`` beside the manifest and left out.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import heapq
import io
import json
import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bilora.atomic import atomic_path, file_hexdigest
from bilora.errors import DataError

COLUMNS = ["path", "label", "generator", "split", "sha1"]
#: What the manifest step learns of each image while decoding it (for the data card).
INFO_COLUMNS = ["format", "mode", "width", "height", "jpeg_quality"]
MANIFEST_NAME = "manifest.parquet"
REJECTS_NAME = "rejects.csv"
SAMPLING_KEY = "bilora_sampling"


class ManifestError(DataError):
    """A manifest could not be built or read."""


@dataclass(frozen=True)
class Entry:
    """One candidate image for a manifest."""

    path: str
    label: int
    generator: str
    split: str


def sha1_of_file(path: str | os.PathLike) -> str:
    """Return the hex sha1 of a file's bytes."""
    return file_hexdigest(path, "sha1")


# IJG's standard luminance quantisation table (quality 50), in zig-zag-free natural order
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57,
    69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64,
    81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip((_IJG_LUMA * scale + 50) // 100, 1, 255)


_IJG_TABLES = np.stack([_ijg_table(q) for q in range(1, 101)])
_IJG_SORTED = np.sort(_IJG_TABLES, axis=1)


def jpeg_quality(img: Image.Image) -> float:
    """The IJG quality (1-100) whose luminance table is nearest the image's, or NaN.

    An estimate from the quantisation table Pillow exposes (``img.quantization``): exact
    for files written by libjpeg at a standard quality, the nearest match otherwise.
    """
    tables = getattr(img, "quantization", None)
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return float("nan")
    return _nearest_quality(tuple(tables[0]))


@functools.lru_cache(maxsize=4096)
def _nearest_quality(table: tuple[int, ...]) -> float:
    luma = np.sort(np.asarray(table, dtype=float))  # order-free: zig-zag or natural
    err = np.abs(_IJG_SORTED - luma).sum(axis=1)
    return float(np.argmin(err) + 1)


def inspect_image(path: str | os.PathLike, data: bytes | None = None
                  ) -> tuple[str | None, dict, str | None]:
    """Read an image once (or take its bytes, ``data``) and decode it fully: (None, its
    format/mode/size/JPEG quality, its sha1) if it is good, else (the reason it is not,
    {}, None)."""
    if data is None:
        data, reason = _read(path)
        if reason:
            return reason, {}, None
    if not data:
        return "empty file", {}, None
    try:
        with Image.open(io.BytesIO(data)) as img:  # structure and chunk checksums
            img.verify()
        with Image.open(io.BytesIO(data)) as img:  # full decode (verify() spends the image)
            img.load()
            if img.width == 0 or img.height == 0:
                return "zero-sized image", {}, None
            info = {"format": img.format or "", "mode": img.mode, "width": img.width,
                    "height": img.height,
                    "jpeg_quality": jpeg_quality(img) if img.format == "JPEG" else float("nan")}
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a reason to reject
        return f"{type(exc).__name__}: {exc}", {}, None
    return None, info, hashlib.sha1(data).hexdigest()


def _read(path: str | os.PathLike) -> tuple[bytes, str | None]:
    """A file's bytes, or the reason it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return fh.read(), None
    except FileNotFoundError:
        return b"", "missing file"
    except OSError as exc:  # a folder, no permission: a reason, not a crash
        return b"", f"{type(exc).__name__}: {exc}"


def resolve_path(dataset_dir: str | os.PathLike, path: str) -> Path:
    """Absolute path of a manifest row's image."""
    p = Path(path)
    return p if p.is_absolute() else Path(dataset_dir) / p


def sample_key(seed: int, dataset: str, split: str, label: int, path: str) -> int:
    """The seeded 128-bit rank of an image in its (split, label) group: a sample keeps the
    ``cap`` lowest. The generator is not part of it, so a real set listed under several
    generators (Ricker's shared test reals) gets the same sample under each of them."""
    text = f"{seed}\0{dataset}\0{split}\0{int(label)}\0{path}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=16).digest(), "big")


class Sampler:
    """A seeded sample of each (generator, split, label) group, capped at
    ``caps[(split, label)]`` (None: all), in two streaming passes: :meth:`observe` every
    entry (it keeps only the ``cap`` lowest :func:`sample_key` per group), then
    :meth:`keep` says which to keep. Bottom-k: the sample depends on the seed and the
    group's files, not on their order."""

    def __init__(self, caps: Mapping[tuple[str, int], int | None], seed: int,
                 dataset: str) -> None:
        self.caps, self.seed, self.dataset = dict(caps), seed, dataset
        self._counts: dict[tuple[str, str, int], int] = {}
        self._heaps: dict[tuple[str, str, int], list[int]] = {}  # negated keys: max-heaps
        self._threshold: dict[tuple[str, str, int], int] = {}

    def _key(self, e: Entry) -> int:
        return sample_key(self.seed, self.dataset, e.split, e.label, e.path)

    def observe(self, e: Entry) -> None:
        """First pass: count ``e`` in its group and rank it."""
        group = (e.generator, e.split, int(e.label))
        self._counts[group] = self._counts.get(group, 0) + 1
        cap = self.caps.get((e.split, int(e.label)))
        if cap is None or cap <= 0:
            return
        heap = self._heaps.setdefault(group, [])
        key = self._key(e)
        if len(heap) < cap:
            heapq.heappush(heap, -key)
        elif key < -heap[0]:
            heapq.heapreplace(heap, -key)

    def notes(self) -> list[dict]:
        """End of the first pass: one record per capped group (available, kept, cap;
        ``kept < cap`` means the source had fewer)."""
        out = []
        for group, n in sorted(self._counts.items()):
            cap = self.caps.get(group[1:])
            if cap is None:
                continue
            if n > cap:
                heap = self._heaps.get(group)
                self._threshold[group] = -heap[0] if heap else -1
            out.append({"generator": group[0], "split": group[1], "label": group[2],
                        "available": n, "kept": min(n, cap), "cap": cap})
        self._heaps.clear()
        return out

    def keep(self, e: Entry) -> bool:
        """Second pass (after :meth:`notes`): whether ``e`` is in the sample."""
        threshold = self._threshold.get((e.generator, e.split, int(e.label)))
        return threshold is None or self._key(e) <= threshold


def sample_entries(entries: Sequence[Entry], caps: Mapping[tuple[str, int], int | None],
                   seed: int, dataset: str) -> tuple[list[Entry], list[dict]]:
    """Cap each (split, label) group of each generator at ``caps[(split, label)]`` images by
    a seeded sample (:class:`Sampler`; no cap: all). Returns the kept entries (in their
    order) and one record per capped group: available, kept, cap."""
    sampler = Sampler(caps, seed, dataset)
    for e in entries:
        sampler.observe(e)
    notes = sampler.notes()
    return [e for e in entries if sampler.keep(e)], notes


def sample_stream(make_entries: Callable[[], Iterable[Entry]],
                  caps: Mapping[tuple[str, int], int | None], seed: int, dataset: str
                  ) -> tuple[Iterator[Entry], list[dict]]:
    """:func:`sample_entries` for a listing too large to hold: ``make_entries()`` is
    listed twice when a cap is set (to rank, then to keep), once otherwise. Returns the
    kept entries as a stream, and the sampling records."""
    if all(c is None for c in caps.values()):
        return iter(make_entries()), []
    sampler = Sampler(caps, seed, dataset)
    for e in make_entries():
        sampler.observe(e)
    notes = sampler.notes()
    return (e for e in make_entries() if sampler.keep(e)), notes


@dataclass(frozen=True)
class ManifestSummary:
    """What :func:`build_manifest` wrote: the manifest's path and row count, the entries
    it was given, the rejected ones (listed in ``rejects_path``), rows per
    (generator, split, label)."""

    path: Path
    rows: int
    entries: int
    rejected: int
    rejects_path: Path
    counts: Mapping[tuple[str, str, int], int]

    def frame(self) -> pd.DataFrame:
        """The manifest, read back."""
        return read_manifest(self.path)


REJECT_COLUMNS = ["path", "generator", "split", "reason"]
CHUNK_ROWS = 16384


def manifest_schema(sampling: list[dict] | None = None):
    """The manifest's Arrow schema (with the sampling records in its metadata)."""
    import pyarrow as pa

    schema = pa.schema([("path", pa.string()), ("label", pa.int8()),
                        ("generator", pa.string()), ("split", pa.string()),
                        ("sha1", pa.string()), ("format", pa.string()), ("mode", pa.string()),
                        ("width", pa.int32()), ("height", pa.int32()),
                        ("jpeg_quality", pa.float32())])
    return schema.with_metadata({SAMPLING_KEY: json.dumps(sampling)}) if sampling else schema


class _Known:
    """The good images seen so far, by content: sha1 -> label and decode info, kept
    compact (a 20-byte key and a few numbers per distinct file) so that a file listed
    again (a shared real set) or a byte-identical copy is hashed but not decoded again,
    and a copy under the other label is caught."""

    def __init__(self) -> None:
        self.index: dict[bytes, int] = {}
        self.labels = array("b")
        self.width, self.height = array("i"), array("i")
        self.quality, self.kind = array("f"), array("H")
        self._kinds: dict[tuple[str, str], int] = {}
        self._kind_names: list[tuple[str, str]] = []

    def add(self, digest: bytes, label: int, info: dict) -> None:
        kind = (info["format"], info["mode"])
        if kind not in self._kinds:
            self._kinds[kind] = len(self._kind_names)
            self._kind_names.append(kind)
        self.index[digest] = len(self.labels)
        self.labels.append(label)
        self.width.append(info["width"])
        self.height.append(info["height"])
        self.quality.append(info["jpeg_quality"])
        self.kind.append(self._kinds[kind])

    def info(self, i: int) -> dict:
        fmt, mode = self._kind_names[self.kind[i]]
        return {"format": fmt, "mode": mode, "width": self.width[i], "height": self.height[i],
                "jpeg_quality": self.quality[i]}


def build_manifest(
    dataset_dir: str | os.PathLike,
    entries: Iterable[Entry],
    max_rejected_fraction: float = 0.01,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    verified: pd.DataFrame | Callable[[], pd.DataFrame | None] | None = None,
    sampling: list[dict] | None = None,
    chunk_rows: int = CHUNK_ROWS,
    workers: int = 1,
) -> ManifestSummary:
    """Decode and hash every entry, write the manifest and its rejects file atomically.

    The entries are streamed: rows go to the parquet file ``chunk_rows`` at a time and
    rejects to ``rejects.csv`` as they come (both under temporary names, renamed at the
    end), so memory grows only by a compact sha1 index of the distinct files. Images that
    fail to decode go to ``rejects.csv`` with their reason; so do both sides of a file
    found under both labels (same bytes, real and fake), never kept in either. If more
    than ``max_rejected_fraction`` of the entries are rejected, raise ManifestError naming
    the dataset folder and the rejects file (no manifest is written). Identical files
    (a shared real set listed under several generators) are decoded once. ``verified``
    rows (taken from another manifest, with absolute paths: a shared real set; or a
    function returning them, called after the entries are read) are added as they are.
    ``sampling`` records (from :class:`Sampler`) go into the manifest's metadata.
    ``workers`` > 1 reads, hashes and decodes in that many processes (same manifest).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    dataset_dir = Path(dataset_dir)
    out = Path(out) if out else dataset_dir / MANIFEST_NAME
    rejects_path = out.parent / REJECTS_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    schema = manifest_schema(sampling)
    columns = schema.names
    known = _Known()
    conflicts: set[str] = set()  # sha1s found under both labels
    counts: dict[tuple[str, str, int], int] = {}
    n_entries = n_rejected = n_rows = 0
    buf: dict[str, list] = {c: [] for c in columns}

    def add_row(path: str, label: int, generator: str, split: str, digest: bytes,
                info: dict) -> None:
        nonlocal n_rows
        i = known.index.get(digest)
        if i is None:
            known.add(digest, label, info)
        elif known.labels[i] != label:
            conflicts.add(digest.hex())
        for col, value in zip(columns, (path, label, generator, split, digest.hex(),
                                        info["format"], info["mode"], info["width"],
                                        info["height"], info["jpeg_quality"]), strict=True):
            buf[col].append(value)
        counts[(generator, split, label)] = counts.get((generator, split, label), 0) + 1
        n_rows += 1
        if len(buf["path"]) >= chunk_rows:
            flush()

    def flush() -> None:
        if buf["path"]:
            writer.write_table(pa.Table.from_pydict(buf, schema=schema))
            for values in buf.values():
                values.clear()

    with atomic_path(out) as tmp_out:
        with atomic_path(rejects_path) as tmp_rej, open(tmp_rej, "w", newline="") as rej_fh:
            rej = csv.writer(rej_fh)
            rej.writerow(REJECT_COLUMNS)
            writer = pq.ParquetWriter(tmp_out, schema)
            try:
                checked = _checked(tqdm(entries, desc=f"manifest {dataset_dir.name}",
                                        disable=not progress, unit="img"),
                                   dataset_dir, known, workers)
                for e, reason, digest, info in checked:
                    n_entries += 1
                    if reason:
                        rej.writerow([e.path, e.generator, e.split, reason])
                        n_rejected += 1
                        continue
                    add_row(e.path, int(e.label), e.generator, e.split, digest, info)
                extra = verified() if callable(verified) else verified
                if extra is not None:
                    for r in extra.itertuples(index=False):
                        add_row(r.path, int(r.label), r.generator, r.split,
                                bytes.fromhex(r.sha1),
                                {k: getattr(r, k, None) for k in INFO_COLUMNS})
                flush()
            finally:
                writer.close()
            if conflicts:
                removed = _drop_conflicts(tmp_out, conflicts, rej, schema)
                n_rejected += len(removed)
                n_rows -= len(removed)
                for key in removed:
                    counts[key] -= 1
        if n_entries == 0 and verified is None:
            raise ManifestError(f"no images found for the manifest of {dataset_dir}")
        share = n_rejected / max(n_entries, 1)
        if share > max_rejected_fraction:
            raise ManifestError(
                f"{n_rejected} of {n_entries} images ({share:.1%}) in {dataset_dir} were "
                f"rejected (failed to decode, or found under both labels), more than the "
                f"allowed {max_rejected_fraction:.1%} (data.max_rejected_fraction); reasons "
                f"in {rejects_path}")
    return ManifestSummary(out, n_rows, n_entries, n_rejected, rejects_path,
                           {k: v for k, v in counts.items() if v})


def _check_file(full: str) -> tuple[str | None, bytes, dict]:
    """Read, hash and decode one file (in a worker): (reason or None, sha1, info)."""
    data, reason = _read(full)
    if reason:
        return reason, b"", {}
    reason, info, _ = inspect_image(full, data)
    return reason, hashlib.sha1(data).digest(), info


def _checked(entries: Iterable[Entry], dataset_dir: Path, known: _Known, workers: int
             ) -> Iterator[tuple[Entry, str | None, bytes, dict]]:
    """Each entry with (reason it is rejected or None, sha1, info), in order. In one
    process, bytes already decoded (``known``) are hashed, not decoded again; with
    ``workers`` processes, a bounded batch at a time is read, hashed and decoded by them."""
    def full(e: Entry) -> str:
        return e.path if os.path.isabs(e.path) else os.path.join(dataset_dir, e.path)

    if workers <= 1:
        for e in entries:
            path = full(e)
            data, reason = _read(path)
            digest = hashlib.sha1(data).digest() if not reason else b""
            i = known.index.get(digest) if data else None
            if i is not None:  # these bytes decoded before: the same result
                yield e, None, digest, known.info(i)
                continue
            if not reason:
                reason, info, _ = inspect_image(path, data)
            yield e, reason, digest, (info if not reason else {})
        return
    import itertools
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        it = iter(entries)
        while batch := list(itertools.islice(it, workers * 512)):
            results = pool.map(_check_file, [full(e) for e in batch], chunksize=64)
            for e, (reason, digest, info) in zip(batch, results, strict=True):
                yield e, reason, digest, info


def _drop_conflicts(path: Path, conflicts: set[str], rej, schema
                    ) -> list[tuple[str, str, int]]:
    """Rewrite the parquet file at ``path`` without the rows whose sha1 is in
    ``conflicts`` (same bytes under both labels); write each to the rejects (``rej``, a
    csv writer) naming a file of the other label. Returns their (generator, split,
    label)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted = pa.array(sorted(conflicts))
    first: dict[tuple[str, int], str] = {}  # (sha1, label) -> the first path of that label
    hits = []
    src = pq.ParquetFile(path)
    for batch in src.iter_batches(columns=["path", "label", "generator", "split", "sha1"]):
        mask = pc.is_in(batch.column("sha1"), value_set=wanted)
        for row in batch.filter(mask).to_pylist():
            first.setdefault((row["sha1"], row["label"]), row["path"])
            hits.append(row)
    for row in hits:
        other = 1 - row["label"]
        rej.writerow([row["path"], row["generator"], row["split"],
                      f"same bytes as {first[(row['sha1'], other)]} (labelled "
                      f"{'fake' if other else 'real'})"])
    tmp = path.with_name(path.name + ".dedup")
    with pq.ParquetWriter(tmp, schema) as writer:
        for i in range(src.num_row_groups):
            table = src.read_row_group(i)
            writer.write_table(table.filter(pc.invert(pc.is_in(table.column("sha1"),
                                                                 value_set=wanted))))
    src.close()
    os.replace(tmp, path)
    return [(r["generator"], r["split"], r["label"]) for r in hits]


def sampling_notes(path: str | os.PathLike) -> list[dict]:
    """The sampling records a manifest was built with (empty when nothing was capped)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(SAMPLING_KEY.encode(), b"[]"))


def write_parquet_atomic(df: pd.DataFrame, out: str | os.PathLike, metadata: dict | None = None
                         ) -> None:
    """Write a parquet file under a temporary name, then rename it into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


def write_csv_atomic(df: pd.DataFrame, out: str | os.PathLike) -> None:
    """Write a csv file (no index) under a temporary name, then rename it into place."""
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest and check its columns; the error names the file."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest not found: {path}")
    df = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest {path} lacks columns {missing}")
    return df


def manifest_digest(df: pd.DataFrame) -> str:
    """A sha1 over the manifest's rows (order-independent): the data's identity."""
    keys = sorted(f"{r.path}\t{r.label}\t{r.generator}\t{r.split}\t{r.sha1}"
                  for r in df.itertuples())
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()


def load_rows(manifests: Sequence[str | os.PathLike], split: str,
              generators: Sequence[str]) -> pd.DataFrame:
    """Rows of ``split`` for ``generators`` from several manifests, with absolute paths
    (``abspath``) and the manifest each row comes from (``manifest``).

    Fails naming the generators that no manifest holds.
    """
    frames = []
    for m in manifests:
        df = read_manifest(m)
        df = df[(df["split"] == split) & df["generator"].isin(list(generators))].copy()
        df["abspath"] = [str(resolve_path(Path(m).parent, p)) for p in df["path"]]
        df["manifest"] = str(m)
        frames.append(df)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    missing = sorted(set(generators) - set(rows.get("generator", [])))
    if missing:
        raise KeyError(f"no {split} images for generator(s) {missing} in manifests "
                       f"{[str(m) for m in manifests]}")
    return rows
