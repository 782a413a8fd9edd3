"""Map image folders onto the canonical layout through manifest rows (no copies).

Each mapper returns ``list[Entry]`` (path, label, generator, split) for
:func:`bilora.data.manifest.build_manifest`. A path is written relative to the dataset
folder when the image lies inside it, else absolute, so a user's own folder is used
where it is and nothing is copied.

Layouts:

``canonical``
    ``<split>/<generator>/.../{0_real,1_fake}/...`` (CNNDetection test sets,
    UniversalFakeDetect) or, for one generator given by name,
    ``<split>/.../{0_real,1_fake}/...`` (CNNDetection's ProGAN train set, whose
    ``<split>/<class>/`` level is flattened). The label is the nearest ``0_real`` /
    ``1_fake`` folder above the image; images under neither are not listed.
``genimage``
    ``<subset>/{train,val}/{ai,nature}/...`` (GenImage: SD v1.4, GLIDE); ``ai`` is fake,
    ``nature`` real; ``split_map`` renames splits (GenImage ``val`` -> ``test``).
``ricker``
    Ricker et al.'s extracted archives: ``test/<G>/...`` fakes and one shared
    ``test/Real/`` listed once per test generator (same path in every row: stored once,
    hashed once); ``{train,val}/<G>/1_fake`` from the archives and ``{train,val}/<G>/0_real``
    from the LSUN rebuild.

Image files are recognised by extension, case-insensitively: see ``IMAGE_EXTENSIONS``.
Names starting with ``.`` (e.g. macOS ``._x.png`` resource forks) are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from bilora.data.manifest import Entry, ManifestError, build_manifest

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp",
                              ".tif", ".tiff", ".gif"})
LAYOUTS = ("canonical", "genimage", "ricker")
SPLITS = ("train", "val", "test")
REAL, FAKE = "0_real", "1_fake"


class SourceError(ManifestError):
    """A source folder does not have the expected layout; the message names the path."""


def is_image(path: str | os.PathLike) -> bool:
    """Whether a file name has an image extension (any case) and is not hidden."""
    name = os.path.basename(path)
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, following links once), sorted by path."""
    out: list[Path] = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out.extend(Path(root) / f for f in files if is_image(f))
    return sorted(out)


def manifest_path(path: str | os.PathLike, dataset_dir: str | os.PathLike) -> str:
    """``path`` relative to ``dataset_dir`` (POSIX form) if inside it, else absolute."""
    path = Path(os.path.abspath(path))
    base = Path(os.path.abspath(dataset_dir))
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def parse_split_map(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"train=train,val=test"`` (or a mapping) -> ``{"train": "train", "val": "test"}``."""
    if text is None:
        return {}
    if isinstance(text, Mapping):
        pairs = dict(text)
    else:
        pairs = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            src, sep, dst = item.partition("=")
            if not sep or not src.strip() or not dst.strip():
                raise SourceError(f"split map item {item!r} is not 'source=target'")
            pairs[src.strip()] = dst.strip()
    bad = sorted(v for v in pairs.values() if v not in SPLITS)
    if bad:
        raise SourceError(f"split map targets {bad} are not among {list(SPLITS)}")
    return pairs


def _find_root(source: Path, required: Sequence[str], layout: str) -> Path:
    """``source`` itself, or its only sub-folder, holding one of the ``required`` folders."""
    if not source.is_dir():
        raise SourceError(f"{layout} source folder not found: {source}")
    if any((source / r).is_dir() for r in required):
        return source
    subs = [d for d in sorted(source.iterdir()) if d.is_dir() and not d.name.startswith(".")
            and any((d / r).is_dir() for r in required)]
    if len(subs) == 1:
        return subs[0]
    raise SourceError(f"{source} does not look like a {layout} folder: none of "
                      f"{list(required)} in it" + (f" (candidates: {subs})" if subs else ""))


def _labelled(folder: Path) -> list[tuple[Path, int]]:
    """Images under ``folder`` with the label of their nearest 0_real/1_fake ancestor."""
    out = []
    for img in list_images(folder):
        for part in reversed(img.relative_to(folder).parts[:-1]):
            if part in (REAL, FAKE):
                out.append((img, 0 if part == REAL else 1))
                break
    return out


def canonical_entries(source: str | os.PathLike, dataset_dir: str | os.PathLike,
                      generator: str | None = None,
                      split_map: Mapping[str, str] | None = None,
                      generators: Sequence[str] | None = None) -> list[Entry]:
    """Entries of a ``<split>/<generator>/{0_real,1_fake}`` (or one generator's
    ``<split>/{0_real,1_fake}``) folder; see the module docstring."""
    split_map = dict(split_map) if split_map else {s: s for s in SPLITS}
    root = _find_root(Path(source), list(split_map), "canonical")
    entries: list[Entry] = []
    found: set[str] = set()
    for src_split, split in split_map.items():
        sdir = root / src_split
        if not sdir.is_dir():
            continue
        if generator is not None:
            base = sdir / generator if (sdir / generator).is_dir() else sdir
            groups = [(generator, base)]
        else:
            if (sdir / REAL).is_dir() or (sdir / FAKE).is_dir():
                raise SourceError(f"{sdir} holds {REAL}/{FAKE} directly: give the generator "
                                  "name (--generator) for this single-generator layout")
            groups = [(d.name, d) for d in sorted(sdir.iterdir())
                      if d.is_dir() and not d.name.startswith(".")
                      and d.name not in (REAL, FAKE)
                      and (not generators or d.name in generators)]
        for gen, folder in groups:
            items = _labelled(folder)
            if items:
                found.add(gen)
            entries.extend(Entry(manifest_path(p, dataset_dir), label, gen, split)
                           for p, label in items)
    if not entries:
        raise SourceError(f"no images under {{0_real,1_fake}} folders of the splits "
                          f"{list(split_map)} in {root}")
    wanted = [generator] if generator else list(generators or [])
    missing = [g for g in wanted if g not in found]
    if missing:
        raise SourceError(f"generators {missing} have no images in {root} (splits "
                          f"{list(split_map)})")
    return entries


def genimage_entries(source: str | os.PathLike, dataset_dir: str | os.PathLike, generator: str,
                     split_map: Mapping[str, str] | None = None) -> list[Entry]:
    """Entries of a GenImage subset: ``{train,val}/{ai,nature}``; ``ai`` fake, ``nature`` real."""
    split_map = dict(split_map) if split_map else {"train": "train", "val": "test"}
    root = _find_root(Path(source), list(split_map), "genimage")
    entries: list[Entry] = []
    for src_split, split in split_map.items():
        for sub, label in (("nature", 0), ("ai", 1)):
            folder = root / src_split / sub
            if not folder.is_dir():
                raise SourceError(f"GenImage folder missing: {folder} (expected "
                                  f"{{train,val}}/{{ai,nature}} under {root})")
            images = list_images(folder)
            if not images:
                raise SourceError(f"no images in {folder}")
            entries.extend(Entry(manifest_path(p, dataset_dir), label, generator, split)
                           for p in images)
    return entries


def ricker_entries(source: str | os.PathLike, dataset_dir: str | os.PathLike,
                   generators: Sequence[str], splits: Sequence[str] = SPLITS,
                   real_dir: str = "Real") -> list[Entry]:
    """Entries of Ricker et al.'s set (extracted archives plus the rebuilt real halves).

    ``source`` is ``diffusion_model_deepfakes_lsun_bedroom`` or a folder holding only it.
    The test split's ``test/<real_dir>`` images are listed once per generator.
    """
    root = _find_root(Path(source), list(splits), "ricker")
    entries: list[Entry] = []
    for split in splits:
        if split not in SPLITS:
            raise SourceError(f"unknown split {split!r}; expected some of {list(SPLITS)}")
        sdir = root / split
        if not sdir.is_dir():
            raise SourceError(f"Ricker split folder missing: {sdir} (extract its archive)")
        if split == "test":
            real = list_images(sdir / real_dir)
            if not real:
                raise SourceError(f"no real test images in {sdir / real_dir}")
            real_paths = [manifest_path(p, dataset_dir) for p in real]
            for gen in generators:
                fakes = list_images(sdir / gen)
                if not fakes:
                    raise SourceError(f"no test images for {gen} in {sdir / gen}; present: "
                                      f"{sorted(d.name for d in sdir.iterdir() if d.is_dir())}")
                entries.extend(Entry(p, 0, gen, split) for p in real_paths)
                entries.extend(Entry(manifest_path(p, dataset_dir), 1, gen, split)
                               for p in fakes)
            continue
        for gen in generators:
            for sub, label in ((REAL, 0), (FAKE, 1)):
                folder = sdir / gen / sub
                images = list_images(folder) if folder.is_dir() else []
                if not images:
                    hint = (" (rebuild it from the LSUN LMDB: bilora rebuild-lsun-real)"
                            if sub == REAL else " (extract the archive)")
                    raise SourceError(f"no images in {folder}{hint}")
                entries.extend(Entry(manifest_path(p, dataset_dir), label, gen, split)
                               for p in images)
    return entries


def layout_entries(layout: str, source: str | os.PathLike, dataset_dir: str | os.PathLike,
                   generator: str | None = None,
                   split_map: Mapping[str, str] | None = None,
                   generators: Sequence[str] | None = None,
                   splits: Sequence[str] | None = None) -> list[Entry]:
    """Dispatch to the mapper of ``layout`` (one of ``LAYOUTS``)."""
    if layout == "canonical":
        return canonical_entries(source, dataset_dir, generator, split_map, generators)
    if layout == "genimage":
        if not generator:
            raise SourceError("the genimage layout needs a generator name")
        return genimage_entries(source, dataset_dir, generator, split_map)
    if layout == "ricker":
        if not generators:
            raise SourceError("the ricker layout needs the list of generators")
        return ricker_entries(source, dataset_dir, generators, splits or SPLITS)
    raise SourceError(f"unknown layout {layout!r}; expected one of {list(LAYOUTS)}")


def shared_test_reals(manifest: str | os.PathLike) -> pd.DataFrame:
    """The shared real test images of a manifest (each once), with absolute paths."""
    from bilora.data.manifest import read_manifest, resolve_path

    df = read_manifest(manifest)
    reals = df[(df["split"] == "test") & (df["label"] == 0)].drop_duplicates("sha1").copy()
    if reals.empty:
        raise SourceError(f"{manifest} holds no real test images to share")
    reals["path"] = [str(resolve_path(Path(manifest).parent, p).resolve()) for p in reals["path"]]
    return reals


def lsun_train_reals(folder: str | os.PathLike, generator: str, dataset_dir: str | os.PathLike
                     ) -> list[Entry]:
    """Train reals of ``generator`` from a further LSUN block (``<folder>/train/<G>/0_real``)."""
    images = list_images(Path(folder) / "train" / generator / REAL)
    if not images:
        raise SourceError(f"no LSUN real images for {generator} in {Path(folder) / 'train'}"
                          f"/{generator}/{REAL} (rebuild them: bilora rebuild-lsun-real "
                          "--extra-generators)")
    return [Entry(manifest_path(p, dataset_dir), 0, generator, "train") for p in images]


def organize(layout: str, source: str | os.PathLike, dataset_dir: str | os.PathLike,
             max_rejected_fraction: float, out: str | os.PathLike | None = None,
             generator: str | None = None, split_map: Mapping[str, str] | None = None,
             generators: Sequence[str] | None = None, splits: Sequence[str] | None = None,
             progress: bool = True, test_reals_from: str | os.PathLike | None = None,
             train_reals_dir: str | os.PathLike | None = None,
             train_per_class: int | None = None, test_fakes_per_generator: int | None = None,
             seed: int = 0, cap_test_reals: bool = False) -> pd.DataFrame:
    """Map ``source`` with ``layout`` and write the dataset's manifest (and rejects.csv).

    ``test_reals_from``: the test reals of every generator are the shared real set of that
    manifest instead of the dataset's own. ``train_reals_dir``: the train reals are a
    further LSUN block rebuilt there instead of the dataset's own. ``train_per_class``
    and ``test_fakes_per_generator`` cap the images per class by a seeded sample (with
    ``cap_test_reals``, a dataset's own test reals are capped like its fakes; a shared real
    set is never capped); the sample is recorded in the manifest.
    """
    import logging

    from bilora.data.manifest import sample_entries

    entries = layout_entries(layout, source, dataset_dir, generator, split_map, generators,
                             splits)
    gens = sorted({e.generator for e in entries})
    if test_reals_from is not None:
        entries = [e for e in entries if not (e.split == "test" and e.label == 0)]
    if train_reals_dir is not None:
        entries = [e for e in entries if not (e.split == "train" and e.label == 0)]
        for g in gens:
            entries += lsun_train_reals(train_reals_dir, g, dataset_dir)
    caps = {("train", 0): train_per_class, ("train", 1): train_per_class,
            ("test", 1): test_fakes_per_generator,
            ("test", 0): test_fakes_per_generator if cap_test_reals and test_reals_from is None
            else None}
    entries, notes = sample_entries(entries, caps, seed, Path(dataset_dir).name)
    log = logging.getLogger("bilora.data")
    for n in notes:
        kind = "real" if n["label"] == 0 else "fake"
        if n["available"] < n["cap"]:
            log.warning("%s %s %s: only %d images, fewer than the %d asked; all are used",
                        n["generator"], n["split"], kind, n["available"], n["cap"])
        elif n["available"] > n["cap"]:
            log.info("%s %s %s: a seeded sample of %d of %d images", n["generator"],
                     n["split"], kind, n["kept"], n["available"])
    verified = None
    if test_reals_from is not None:
        reals = shared_test_reals(test_reals_from)
        verified = pd.concat([reals.assign(generator=g) for g in gens], ignore_index=True)
    return build_manifest(dataset_dir, entries, max_rejected_fraction, out=out,
                          progress=progress, verified=verified, sampling=notes)
