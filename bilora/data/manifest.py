"""Manifests: the one table per dataset that everything downstream reads.

A manifest row describes one image: ``path`` (relative to the dataset folder,
or absolute for images left where the user keeps them), ``label`` (0 real,
1 fake), ``generator``, ``split`` and ``sha1`` of the file's bytes. Building a
manifest decodes every image; files that fail are listed with their reason in
``rejects.csv`` beside the manifest and left out.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from bilora.atomic import atomic_path, file_hexdigest
from bilora.errors import DataError

COLUMNS = ["path", "label", "generator", "split", "sha1"]
MANIFEST_NAME = "manifest.parquet"
REJECTS_NAME = "rejects.csv"


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


def check_image(path: str | os.PathLike) -> str | None:
    """Decode an image fully; return None if it is good, else the reason it is not."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as img:  # structure and chunk checksums
            img.verify()
        with Image.open(path) as img:  # full decode (verify() leaves the image unusable)
            img.load()
            if img.width == 0 or img.height == 0:
                return "zero-sized image"
    except FileNotFoundError:
        return "missing file"
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a reason to reject
        return f"{type(exc).__name__}: {exc}"
    return None


def resolve_path(dataset_dir: str | os.PathLike, path: str) -> Path:
    """Absolute path of a manifest row's image."""
    p = Path(path)
    return p if p.is_absolute() else Path(dataset_dir) / p


def build_manifest(
    dataset_dir: str | os.PathLike,
    entries: Iterable[Entry],
    max_rejected_fraction: float = 0.01,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Decode and hash every entry, write the manifest and its rejects file atomically.

    Images that fail to decode go to ``rejects.csv`` with their reason. If more than
    ``max_rejected_fraction`` of the entries are rejected, raise ManifestError naming
    the dataset folder and the rejects file. Identical files listed under several
    generators (a shared real set) are hashed once.
    """
    from tqdm import tqdm

    dataset_dir = Path(dataset_dir)
    out = Path(out) if out else dataset_dir / MANIFEST_NAME
    entries = list(entries)
    rows, rejects, seen = [], [], {}
    for e in tqdm(entries, desc=f"manifest {dataset_dir.name}", disable=not progress, unit="img"):
        full = resolve_path(dataset_dir, e.path)
        if e.path not in seen:
            reason = check_image(full)
            seen[e.path] = (reason, None if reason else sha1_of_file(full))
        reason, digest = seen[e.path]
        if reason:
            rejects.append({"path": e.path, "generator": e.generator, "split": e.split,
                            "reason": reason})
        else:
            rows.append({"path": e.path, "label": int(e.label), "generator": e.generator,
                         "split": e.split, "sha1": digest})
    rejects_path = out.parent / REJECTS_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(pd.DataFrame(rejects, columns=["path", "generator", "split", "reason"]),
                rejects_path)
    if not entries:
        raise ManifestError(f"no images found for the manifest of {dataset_dir}")
    share = len(rejects) / len(entries)
    if share > max_rejected_fraction:
        raise ManifestError(
            f"{len(rejects)} of {len(entries)} images ({share:.1%}) in {dataset_dir} failed to "
            f"decode, more than the allowed {max_rejected_fraction:.1%} "
            f"(data.max_rejected_fraction); reasons in {rejects_path}"
        )
    df = pd.DataFrame(rows, columns=COLUMNS).astype({"label": "int8"})
    write_parquet_atomic(df, out)
    return df


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
