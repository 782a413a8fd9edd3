"""Manifests: the one table per dataset that everything downstream reads.

A manifest row describes one image: ``path`` (relative to the dataset folder,
or absolute for images left where the user keeps them), ``label`` (0 real,
1 fake), ``generator``, ``split`` and ``sha1`` of the file's bytes. Building a
manifest decodes every image; files that fail are listed with their reason in
``rejects.csv`` beside the manifest and left out.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bilora.atomic import atomic_path, derive_seed, file_hexdigest
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


def jpeg_quality(img: Image.Image) -> float:
    """The IJG quality (1-100) whose luminance table is nearest the image's, or NaN.

    An estimate from the quantisation table Pillow exposes (``img.quantization``): exact
    for files written by libjpeg at a standard quality, the nearest match otherwise.
    """
    tables = getattr(img, "quantization", None)
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return float("nan")
    luma = np.sort(np.asarray(tables[0], dtype=float))  # order-free: zig-zag or natural
    err = np.abs(np.sort(_IJG_TABLES, axis=1) - luma).sum(axis=1)
    return float(np.argmin(err) + 1)


def inspect_image(path: str | os.PathLike) -> tuple[str | None, dict, str | None]:
    """Read an image once and decode it fully: (None, its format/mode/size/JPEG quality, its
    sha1) if it is good, else (the reason it is not, {}, None)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "missing file", {}, None
    except OSError as exc:  # a folder, no permission: a reason, not a crash
        return f"{type(exc).__name__}: {exc}", {}, None
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


def resolve_path(dataset_dir: str | os.PathLike, path: str) -> Path:
    """Absolute path of a manifest row's image."""
    p = Path(path)
    return p if p.is_absolute() else Path(dataset_dir) / p


def sample_entries(entries: Sequence[Entry], caps: Mapping[tuple[str, int], int | None],
                   seed: int, dataset: str) -> tuple[list[Entry], list[dict]]:
    """Cap each (split, label) group of each generator at ``caps[(split, label)]`` images by
    a seeded sample (no cap: all). Returns the kept entries (in their order) and one record
    per capped group: available, kept, cap (``kept < cap`` means the source had fewer).
    """
    import random

    groups: dict[tuple[str, str, int], list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault((e.generator, e.split, e.label), []).append(i)
    keep: set[int] = set()
    notes = []
    for (gen, split, label), idx in sorted(groups.items()):
        cap = caps.get((split, label))
        if cap is None or len(idx) <= cap:
            keep.update(idx)
            chosen = len(idx)
        else:  # seeded by the group's files: a real set listed under every generator (Ricker's
            # shared test reals) gets the same sample under each of them
            files = hashlib.sha1("\n".join(sorted(entries[i].path for i in idx)).encode())
            rng = random.Random(derive_seed(seed, "sample", dataset, split, label,
                                            files.hexdigest()))
            keep.update(rng.sample(idx, cap))
            chosen = cap
        if cap is not None:
            notes.append({"generator": gen, "split": split, "label": label,
                          "available": len(idx), "kept": chosen, "cap": cap})
    return [e for i, e in enumerate(entries) if i in keep], notes


def build_manifest(
    dataset_dir: str | os.PathLike,
    entries: Iterable[Entry],
    max_rejected_fraction: float = 0.01,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    verified: pd.DataFrame | None = None,
    sampling: list[dict] | None = None,
) -> pd.DataFrame:
    """Decode and hash every entry, write the manifest and its rejects file atomically.

    Images that fail to decode go to ``rejects.csv`` with their reason. If more than
    ``max_rejected_fraction`` of the entries are rejected, raise ManifestError naming
    the dataset folder and the rejects file. Identical files listed under several
    generators (a shared real set) are decoded and hashed once. ``verified`` rows (taken
    from another manifest, with absolute paths: a shared real set) are added as they are.
    ``sampling`` records (from :func:`sample_entries`) go into the manifest's metadata.
    """
    from tqdm import tqdm

    dataset_dir = Path(dataset_dir)
    out = Path(out) if out else dataset_dir / MANIFEST_NAME
    entries = list(entries)
    rows, rejects, seen = [], [], {}
    for e in tqdm(entries, desc=f"manifest {dataset_dir.name}", disable=not progress, unit="img"):
        full = resolve_path(dataset_dir, e.path)
        if e.path not in seen:
            seen[e.path] = inspect_image(full)
        reason, info, digest = seen[e.path]
        if reason:
            rejects.append({"path": e.path, "generator": e.generator, "split": e.split,
                            "reason": reason})
        else:
            rows.append({"path": e.path, "label": int(e.label), "generator": e.generator,
                         "split": e.split, "sha1": digest, **info})
    rejects_path = out.parent / REJECTS_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(pd.DataFrame(rejects, columns=["path", "generator", "split", "reason"]),
                     rejects_path)
    if not entries and verified is None:
        raise ManifestError(f"no images found for the manifest of {dataset_dir}")
    share = len(rejects) / max(len(entries), 1)
    if share > max_rejected_fraction:
        raise ManifestError(
            f"{len(rejects)} of {len(entries)} images ({share:.1%}) in {dataset_dir} failed to "
            f"decode, more than the allowed {max_rejected_fraction:.1%} "
            f"(data.max_rejected_fraction); reasons in {rejects_path}"
        )
    df = pd.DataFrame(rows, columns=COLUMNS + INFO_COLUMNS)
    if verified is not None and len(verified):
        df = pd.concat([df, verified.reindex(columns=COLUMNS + INFO_COLUMNS)],
                       ignore_index=True)
    df = df.astype({"label": "int8", "width": "int32", "height": "int32",
                    "jpeg_quality": "float32"})
    meta = {SAMPLING_KEY: json.dumps(sampling)} if sampling else None
    write_parquet_atomic(df, out, meta)
    return df


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
