"""The ``community_forensics`` layout: Community Forensics' parquet shards (Park & Owens 2024).

The Hugging Face dataset (``OwensLab/CommunityForensics-Small`` by default) ships
``data/*.parquet`` shards, one row an image: its bytes (``image_data`` as the set ships
them, or ``image``: plain binary or the ``{bytes, path}`` struct of the ``datasets`` Image
feature), ``label`` (0 real, 1 fake), ``model_name`` (the generator; a real carries its
source dataset's name: FFHQ, VISION, COCO, Landscapes, ...) and ``image_name``.

Nothing is extracted wholesale. Pass 1 reads only ``label`` and ``model_name`` and draws a
seeded sample: ``per_generator`` fakes of each configured generator (its id is its
``model_name`` with ``/`` replaced by ``--``) and ONE sample of ``per_generator`` reals from
all the split's reals, listed under every generator (the same images, paired with each
generator's fakes). Pass 2 reads the image bytes of the row groups holding sampled rows
and writes the sampled images, atomically, to
``<dataset_dir>/images/<generator>/<name>.<ext>`` and ``images/real/<source>/<name>.<ext>``
(the extension from the bytes); other files left there by an earlier sample are removed.
Every image goes to one ``split`` (``test``).
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Sequence
from pathlib import Path

from bilora.api.layouts import Layout
from bilora.atomic import atomic_path, derive_seed
from bilora.data.folders import IMAGE_EXTENSIONS, SourceError, manifest_path
from bilora.data.manifest import Entry

IMAGE_COLUMNS = ("image_data", "image")  # as the set ships it; as `datasets` writes it
IMAGES_DIR = "images"
REAL_DIR = "real"
DEFAULT_PER_GENERATOR = 1000
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def generator_id(model_name: str) -> str:
    """A generator's id: its ``model_name`` with ``/`` replaced by ``--``."""
    return model_name.replace("/", "--")


def image_extension(data: bytes, name: str | None = None) -> str:
    """The file extension of an image's bytes (by signature), else its name's, else ``.bin``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return ".gif"
    if data.startswith(b"BM"):
        return ".bmp"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return ".tif"
    ext = os.path.splitext(name or "")[1].lower()
    return ext if ext in IMAGE_EXTENSIONS else ".bin"


def shards(root: Path) -> list[Path]:
    """The parquet shards of a Community Forensics folder: ``data/*.parquet`` (any depth
    under ``data/``), else any under ``root``; ``root`` may be one shard."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise SourceError(f"community_forensics source not found: {root}")
    found = sorted(p for p in root.glob("data/**/*.parquet") if p.is_file())
    found = found or sorted(p for p in root.rglob("*.parquet") if p.is_file()
                            and not any(part.startswith(".") for part in p.parts))
    if not found:
        raise SourceError(f"{root}: no parquet shards (the community_forensics layout expects "
                          "data/*.parquet)")
    return found


def _refused(path: Path, exc: BaseException) -> SourceError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return SourceError(f"{path}: not a readable parquet shard (cut short or damaged?): {first}")


def _open(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise _refused(path, exc) from None


def _need(path: Path, names: Sequence[str], wanted: Sequence[str]) -> None:
    missing = [c for c in wanted if c not in names]
    if missing:
        raise SourceError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)}; the "
                          "community_forensics layout needs label, model_name and image_data "
                          "or image)")


def _labels(path: Path, column) -> list[int]:
    try:
        return [int(v) for v in column.to_pylist()]
    except (TypeError, ValueError):
        raise SourceError(f"{path}: column 'label' is not 0/1 (0 real, 1 fake)") from None


def _scan(files: Sequence[Path]) -> tuple[dict[str, list[int]], list[int], list[str],
                                          list[int]]:
    """Pass 1: label and model_name only. Returns the global row numbers of each fake
    generator's images (by generator id) and of every real, the reals' sources (in the
    order of their rows) and each shard's first row number (and the total)."""
    import pyarrow as pa

    fakes: dict[str, list[int]] = {}
    reals: list[int] = []
    sources: list[str] = []
    starts: list[int] = []
    row = 0
    for path in files:
        pf = _open(path)
        _need(path, pf.schema_arrow.names, ("label", "model_name"))
        starts.append(row)
        try:
            for batch in pf.iter_batches(columns=["label", "model_name"], batch_size=65536):
                labels = _labels(path, batch.column("label"))
                names = batch.column("model_name").to_pylist()
                for label, name in zip(labels, names, strict=True):
                    if label == 1:
                        fakes.setdefault(generator_id(str(name)), []).append(row)
                    elif label == 0:
                        reals.append(row)
                        sources.append(str(name or "unknown"))
                    else:
                        raise SourceError(f"{path}: label {label} is not 0 (real) or 1 (fake)")
                    row += 1
        except (pa.ArrowException, OSError) as exc:
            raise _refused(path, exc) from None
    starts.append(row)
    return fakes, reals, sources, starts


def _sample(rows: list[int], k: int, seed: int, *parts: object) -> list[int]:
    import random

    if len(rows) <= k:
        return list(rows)
    return sorted(random.Random(derive_seed(seed, "community_forensics", *parts)).sample(rows, k))


def _bytes(value, path: Path) -> bytes | None:
    """An image cell's bytes: plain binary, or the ``{bytes, path}`` struct."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise SourceError(f"{path}: an image cell is {type(value).__name__}, not bytes")


def _write(target: Path, data: bytes) -> None:
    if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
        return
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def _extract(files: Sequence[Path], starts: list[int], folders: dict[int, str],
             out_dir: Path) -> dict[int, Path]:
    """Pass 2: write the image of each wanted row (global row -> folder under ``out_dir``)
    reading only the row groups that hold one; returns row -> file written."""
    import pyarrow as pa

    written: dict[int, Path] = {}
    taken: set[Path] = set()
    wanted = sorted(folders)
    for i, path in enumerate(files):
        lo, hi = starts[i], starts[i + 1]
        mine = [r for r in wanted if lo <= r < hi]
        if not mine:
            continue
        pf = _open(path)
        names = pf.schema_arrow.names
        image_col = next((c for c in IMAGE_COLUMNS if c in names), None)
        if image_col is None:
            _need(path, names, ("image_data",))
        columns = [image_col] + (["image_name"] if "image_name" in names else [])
        groups, first, g_start = [], [], 0  # row groups holding a wanted row
        meta = pf.metadata
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            at = bisect.bisect_left(mine, lo + g_start)  # mine is sorted
            if at < len(mine) and mine[at] < lo + g_start + n:
                groups.append(g)
                first.append(lo + g_start)
            g_start += n
        pending = set(mine)
        try:
            for g, base in zip(groups, first, strict=True):
                table = pf.read_row_group(g, columns=columns)
                local = [r - base for r in mine if base <= r < base + table.num_rows]
                picked = table.take(local).to_pylist()
                for r, rec in zip((base + j for j in local), picked, strict=True):
                    data = _bytes(rec[image_col], path)
                    if not data:
                        raise SourceError(f"{path}: row {r - lo} holds no image bytes")
                    name = rec.get("image_name") or f"{r:09d}"
                    stem = _UNSAFE.sub("_", os.path.splitext(os.path.basename(str(name)))[0])
                    stem = stem if stem and not stem.startswith(".") else f"{r:09d}"
                    target = out_dir / folders[r] / f"{stem}{image_extension(data, name)}"
                    if target in taken:  # two sampled rows of one folder share a name
                        target = target.with_name(f"{stem}-{r}{target.suffix}")
                    taken.add(target)
                    _write(target, data)
                    written[r] = target
                    pending.discard(r)
        except (pa.ArrowException, OSError) as exc:
            raise _refused(path, exc) from None
        if pending:
            raise SourceError(f"{path}: rows {sorted(pending)[:3]} not found (the shard changed "
                              "between the two passes?)")
    return written


def _prune(out_dir: Path, keep: set[Path]) -> None:
    """Remove images an earlier sample left under ``out_dir`` (ours alone)."""
    if not out_dir.is_dir():
        return
    for p in sorted(out_dir.rglob("*"), reverse=True):
        if p.is_file() and p not in keep:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()


def community_forensics_entries(source: str | os.PathLike | None,
                                dataset_dir: str | os.PathLike,
                                generators: Sequence[str] | None = None,
                                generator: str | None = None,
                                per_generator: int = DEFAULT_PER_GENERATOR,
                                hub: str | None = None, revision: str | None = None,
                                seed: int = 0) -> list[Entry]:
    """Entries of a seeded sample of Community Forensics (see the module docstring): the
    shards under ``source``, else those of the hub cache's snapshot of dataset ``hub``
    (at ``revision``); ``per_generator`` fakes per generator and one shared sample of as
    many reals; images written under ``<dataset_dir>/images``."""
    if source is not None:
        files = shards(Path(source))
        where = str(source)
    elif hub:
        from bilora.data.hub import snapshot

        root = snapshot(hub, revision)
        files = shards(root)
        where = f"hub dataset {hub} ({root})"
    else:
        raise SourceError("the community_forensics layout needs --source or --param hub=...")
    wanted = [generator] if generator else list(generators or [])
    if not wanted:
        raise SourceError("the community_forensics layout needs --generators (model_name with "
                          "/ replaced by --)")
    if int(per_generator) < 1:
        raise SourceError(f"per_generator must be at least 1, not {per_generator}")
    fakes, reals, sources, starts = _scan(files)
    missing = [g for g in wanted if g not in fakes]
    if missing:
        known = sorted(fakes)
        raise SourceError(f"{where}: no fakes of generator {missing[0]!r} in {len(files)} "
                          f"shard(s); available ({len(known)}): {', '.join(known[:8])}"
                          f"{', ...' if len(known) > 8 else ''}")
    if not reals:
        raise SourceError(f"{where}: no real images (label 0) to pair the fakes with")
    k = int(per_generator)
    folders: dict[int, str] = {}
    picked = {g: _sample(fakes[g], k, seed, "fake", g) for g in wanted}
    for g, rows in picked.items():
        folders.update({r: g for r in rows})
    source_of = dict(zip(reals, sources, strict=True))
    real_rows = _sample(reals, k, seed, "real")
    folders.update({r: f"{REAL_DIR}/{_UNSAFE.sub('_', source_of[r])}" for r in real_rows})
    out_dir = Path(dataset_dir) / IMAGES_DIR
    written = _extract(files, starts, folders, out_dir)
    _prune(out_dir, set(written.values()))
    entries = []
    for g in wanted:
        entries += [Entry(manifest_path(written[r], dataset_dir), 0, g, "test")
                    for r in real_rows]
        entries += [Entry(manifest_path(written[r], dataset_dir), 1, g, "test")
                    for r in picked[g]]
    return entries


LAYOUT = Layout(
    mapper=community_forensics_entries,
    test_reals="one seeded sample of Community Forensics' reals (FFHQ, VISION, COCO, "
               "Landscapes, ...: images/real/<source>), the same for every generator",
    summary="Community Forensics parquet shards (data/*.parquet, local or a hub dataset), a "
            "seeded sample per generator, one split",
    params=("generators", "generator", "per_generator", "hub", "revision", "seed"),
    licence="CC BY-NC-SA 4.0 (Community Forensics-Small, OwensLab); real images also carry "
            "the terms of their source datasets",
    schema={"properties": {
        "per_generator": {"type": "integer", "minimum": 1, "default": DEFAULT_PER_GENERATOR,
                          "description": "community_forensics: fakes sampled per generator, and "
                                         "reals in the one real sample all generators share."},
        "hub": {"type": ["string", "null"],
                "pattern": r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$",
                "description": "community_forensics: a Hugging Face dataset repo read from the "
                               "hub cache (fill it: bilora prefetch); path not needed then (a "
                               "path given wins; null: none)."},
        "revision": {"type": ["string", "null"],
                     "description": "community_forensics: the hub dataset's revision."}}},
)
