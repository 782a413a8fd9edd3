"""Rebuild the real halves of Ricker et al.'s train/val splits from the LSUN Bedroom LMDB.

The recipe (DATASETS.md, and the authors' ``recreate_train_data.py``):

* iterate the LSUN Bedroom *train* LMDB in key order, counting every record from 0
  (the *global running index*, skipped records included);
* skip the first ``skip`` records (10,000: the test set's real images);
* then, per generator in the configured order (ADM, DDPM, Diff-ProjectedGAN,
  Diff-StyleGAN2, IDDPM, LDM, PNDM, ProGAN, ProjectedGAN, StyleGAN), the next
  ``train_per_generator`` records (39,000) go to ``train/<G>/0_real`` and the next
  ``val_per_generator`` (1,000) to ``val/<G>/0_real``;
* each record is an encoded image with one side 256: it is centre-cropped to
  ``size`` x ``size`` with the box ``(w//2 - size//2, h//2 - size//2)`` (the authors'
  box for size 256), kept in its decoded mode, and saved as PNG with Pillow's default
  settings, named ``f"{index:08}.png"`` by the global running index (so the first
  train image of ADM is ``00010000.png``).

The published digests of ``train/`` and ``val/`` hash the PNG bytes, so they match only
if this Pillow/zlib produces the same bytes as the authors'; a mismatch there with the
right pixels is possible and is not a sign of a wrong record order.

Each PNG is written under a temporary name and renamed into place, so a file under its
final name is complete; a rerun skips those. A completion marker
``<dest>/lsun_real.done.json`` (outside ``train/`` and ``val/``, which are hashed) records
the parameters; with a matching marker the rebuild returns at once.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bilora.atomic import atomic_path, write_json
from bilora.data.ricker import RICKER_GENERATORS
from bilora.errors import DataError

DONE_NAME = "lsun_real.done.json"
#: Folder (beside the dataset's top folder) of the further blocks for extra generators.
EXTRA_DIR = "lsun_extra"
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


class LsunError(DataError):
    """The LSUN rebuild could not be done; the message names the LMDB, record or folder."""


@dataclass(frozen=True)
class Plan:
    """Where the records after ``skip`` go: blocks of train then val per generator, then a
    train block per extra generator (real halves for generators outside Ricker's set,
    e.g. GenImage's SD v1.4 and GLIDE, disjoint from every other block)."""

    generators: tuple[str, ...]
    skip: int = 10_000
    train_per_generator: int = 39_000
    val_per_generator: int = 1_000
    extra: tuple[str, ...] = ()

    @property
    def ricker_end(self) -> int:
        """Index after the last record of Ricker et al.'s blocks."""
        return self.skip + len(self.generators) * (self.train_per_generator
                                                   + self.val_per_generator)

    @property
    def total(self) -> int:
        """Number of records read from the LMDB, skipped ones included."""
        return self.ricker_end + len(self.extra) * self.train_per_generator

    def target(self, index: int) -> tuple[str, str] | None:
        """``(split, generator)`` of the record with global running index ``index``;
        split ``extra`` for the blocks of the extra generators."""
        if index < self.skip or index >= self.total:
            return None
        if index >= self.ricker_end:
            return "extra", self.extra[(index - self.ricker_end) // self.train_per_generator]
        block = self.train_per_generator + self.val_per_generator
        gen, within = divmod(index - self.skip, block)
        return ("train" if within < self.train_per_generator else "val"), self.generators[gen]

    def folder(self, split: str, generator: str) -> str:
        """Folder of a split's real images for a generator, relative to the dataset's top
        folder (the extra blocks go to ``../lsun_extra/train/<G>/0_real``)."""
        if split == "extra":
            return f"../{EXTRA_DIR}/train/{generator}/0_real"
        return f"{split}/{generator}/0_real"

    def expected(self) -> dict[str, set[str]]:
        """Relative folder -> the PNG names it must hold."""
        out: dict[str, set[str]] = {}
        for i in range(self.skip, self.total):
            split, gen = self.target(i)  # type: ignore[misc]
            out.setdefault(self.folder(split, gen), set()).add(png_name(i))
        return out


def png_name(index: int) -> str:
    """File name of the record with global running index ``index``."""
    return f"{index:08}.png"


def centre_crop(img: Image.Image, size: int) -> Image.Image:
    """The authors' centre crop: box ``(w//2 - size//2, h//2 - size//2)`` of ``size`` x ``size``."""
    w, h = img.size
    left, top = w // 2 - size // 2, h // 2 - size // 2
    return img.crop((left, top, left + size, top + size))


def convert_record(data: bytes, size: int, where: str) -> Image.Image:
    """Decode one LMDB record and centre-crop it; LsunError names ``where`` on failure."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:  # any decoder failure
        raise LsunError(f"{where}: cannot decode the image ({type(exc).__name__}: {exc})") from exc
    if min(img.size) < size:
        raise LsunError(f"{where}: image is {img.size[0]}x{img.size[1]}, smaller than "
                        f"{size}x{size}")
    out = centre_crop(img, size)
    return out if out.mode in _PNG_MODES else out.convert("RGB")


def _write_png(job: tuple[int, bytes, str, int, str]) -> int:
    index, data, path, size, where = job
    img = convert_record(data, size, where)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return index


def _records(lmdb_path: Path, plan: Plan, dest: Path
             ) -> Iterator[tuple[int, bytes | None, str, str]]:
    """Yield ``(index, value or None if the PNG exists, path, where)`` for planned records."""
    import lmdb

    try:
        env = lmdb.open(str(lmdb_path), readonly=True, lock=False, readahead=False,
                        max_readers=1, subdir=lmdb_path.is_dir())
    except lmdb.Error as exc:
        raise LsunError(f"cannot open the LSUN LMDB at {lmdb_path}: {exc}") from exc
    try:
        with env.begin(write=False) as txn:
            cursor = txn.cursor()
            index = -1
            for index, key in enumerate(cursor.iternext(keys=True, values=False)):
                if index >= plan.total:
                    break
                target = plan.target(index)
                if target is None:
                    continue
                path = dest / plan.folder(*target) / png_name(index)
                where = f"{lmdb_path} record {index} (key {key!r})"
                value = None if path.exists() else bytes(cursor.value())
                yield index, value, str(path), where
            if index + 1 < plan.total:
                raise LsunError(f"the LMDB at {lmdb_path} has {index + 1} records; the plan "
                                f"needs {plan.total} (skip {plan.skip} + "
                                f"{len(plan.generators)} generators x "
                                f"({plan.train_per_generator} + {plan.val_per_generator})"
                                f" + {len(plan.extra)} extra x {plan.train_per_generator})")
    finally:
        env.close()


def _check_folders(dest: Path, plan: Plan) -> None:
    """Remove stale temporaries; refuse folders holding PNGs the plan does not make."""
    for folder, names in plan.expected().items():
        d = dest / folder
        if not d.is_dir():
            continue
        for tmp in d.glob("*.tmp"):
            tmp.unlink()
        extra = sorted(p.name for p in d.iterdir() if p.name not in names)
        if extra:
            raise LsunError(f"{d} holds {len(extra)} files this rebuild would not make "
                            f"(e.g. {extra[0]}); were the counts or the generator order "
                            "changed? Remove them and run again")


def _params(lmdb_path: Path, plan: Plan, size: int) -> dict:
    return {"lmdb": str(lmdb_path.resolve()), "generators": list(plan.generators),
            "skip": plan.skip, "train_per_generator": plan.train_per_generator,
            "val_per_generator": plan.val_per_generator, "size": size,
            "extra": list(plan.extra)}


def rebuild_lsun_real(lmdb_path: str | os.PathLike, dest: str | os.PathLike,
                      generators: Sequence[str] = RICKER_GENERATORS, skip: int = 10_000,
                      train_per_generator: int = 39_000, val_per_generator: int = 1_000,
                      size: int = 256, workers: int = 1, progress: bool = True,
                      extra: Sequence[str] = ()) -> int:
    """Write ``dest/{train,val}/<G>/0_real/<index:08>.png`` from the LMDB (and, for each
    ``extra`` generator, ``dest/../lsun_extra/train/<G>/0_real``); return how many PNGs
    were written in this call (0 when a matching completion marker exists)."""
    from tqdm import tqdm

    lmdb_path, dest = Path(lmdb_path), Path(dest)
    if not lmdb_path.exists():
        raise LsunError(f"LSUN LMDB not found: {lmdb_path} (download bedroom_train_lmdb from "
                        "the LSUN project and give its path)")
    if len(set(generators)) != len(generators) or not generators:
        raise LsunError(f"generators must be a non-empty list without repeats: {generators}")
    if set(extra) & set(generators) or len(set(extra)) != len(extra):
        raise LsunError(f"extra generators {list(extra)} repeat or overlap {list(generators)}")
    plan = Plan(tuple(generators), skip, train_per_generator, val_per_generator, tuple(extra))
    params = _params(lmdb_path, plan, size)
    marker = dest / DONE_NAME
    if marker.exists():
        try:
            if json.loads(marker.read_text()).get("params") == params:
                return 0
        except ValueError:
            pass
        marker.unlink()
    _check_folders(dest, plan)
    for folder in plan.expected():
        (dest / folder).mkdir(parents=True, exist_ok=True)
    jobs = ((i, v, p, size, w) for i, v, p, w in _records(lmdb_path, plan, dest))
    written = 0
    with tqdm(total=plan.total - plan.skip, desc="LSUN real halves", unit="img",
              disable=not progress) as bar:
        todo = _skip_existing(jobs, bar)
        if workers > 1:
            from multiprocessing import get_context

            with get_context("spawn").Pool(workers) as pool:
                # bounded batches: the pool would otherwise read the whole LMDB into memory
                while batch := list(itertools.islice(todo, workers * 128)):
                    pool.map(_write_png, batch, chunksize=16)
                    written += len(batch)
                    bar.update(len(batch))
        else:
            for job in todo:
                _write_png(job)
                written += 1
                bar.update(1)
    write_json(marker, {"params": params, "images": plan.total - plan.skip})
    return written


_Job = tuple[int, bytes | None, str, int, str]


def _skip_existing(jobs: Iterator[_Job], bar: Any) -> Iterator[_Job]:
    for job in jobs:
        if job[1] is None:
            bar.update(1)
            continue
        yield job
