"""Organize a dataset: map its folder with its layout and write the manifest (no copies).

A layout (``bilora/data/layouts/``, registered in ``bilora.api.layouts.LAYOUTS``) maps a
folder onto entries (path, label, generator, split; a list, or a stream for a large
folder) for :func:`bilora.data.manifest.build_manifest`; :func:`organize` then swaps in
shared test reals or further LSUN train reals, caps the classes by a seeded sample and
writes the manifest, streaming the listing through (memory does not grow with it but by
a compact sha1 index). The folder helpers a layout builds on are in :mod:`bilora.data.folders`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from bilora.data.folders import REAL, SourceError, iter_image_paths, manifest_path
from bilora.data.manifest import (
    CHUNK_ROWS,
    Entry,
    ManifestSummary,
    build_manifest,
    sample_stream,
)


def layout_entries(layout: str, source: str | os.PathLike | None,
                   dataset_dir: str | os.PathLike, **params: Any) -> Iterable[Entry]:
    """Map ``source`` with the registered ``layout``: its mapper gets those of ``params``
    it takes (``Layout.params``) that are not None; one it requires and lacks is an error.
    Only a layout that takes a ``hub`` key, given one, does without a ``source``. The
    entries may be a stream (a generator): iterate them once."""
    from bilora.api.layouts import LAYOUTS

    try:
        spec = LAYOUTS.get(layout)
    except KeyError as exc:
        raise SourceError(exc.args[0]) from None
    given = {k: v for k, v in params.items() if k in spec.params and v is not None}
    missing = [k for k in spec.required if not given.get(k)]
    if missing:
        raise SourceError(f"the {layout} layout needs " + ", ".join(
            f"--{k.replace('_', '-')}" for k in missing))
    if source is None and not given.get("hub"):
        raise SourceError(f"the {layout} layout needs --source" + (
            " (or its hub key: --param hub=...)" if "hub" in spec.params else ""))
    return spec.mapper(source, dataset_dir, **given)


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
                     ) -> Iterator[Entry]:
    """Train reals of ``generator`` from a further LSUN block (``<folder>/train/<G>/0_real``),
    streamed."""
    block = Path(folder) / "train" / generator / REAL
    count = 0
    for p in iter_image_paths(block):
        count += 1
        yield Entry(manifest_path(p, dataset_dir), 0, generator, "train")
    if not count:
        raise SourceError(f"no LSUN real images for {generator} in {Path(folder) / 'train'}"
                          f"/{generator}/{REAL} (rebuild them: bilora rebuild-lsun-real "
                          "--extra-generators)")


def organize(layout: str, source: str | os.PathLike | None, dataset_dir: str | os.PathLike,
             max_rejected_fraction: float, out: str | os.PathLike | None = None,
             progress: bool = True, test_reals_from: str | os.PathLike | None = None,
             train_reals_dir: str | os.PathLike | None = None,
             train_per_class: int | None = None, test_fakes_per_generator: int | None = None,
             seed: int = 0, cap_test_reals: bool = False, chunk_rows: int = CHUNK_ROWS,
             workers: int = 1, **params: Any) -> ManifestSummary:
    """Map ``source`` with ``layout`` (given its ``params``: :func:`layout_entries`) and
    write the dataset's manifest (and rejects.csv); returns its :class:`ManifestSummary`.

    ``test_reals_from``: the test reals of every generator are the shared real set of that
    manifest instead of the dataset's own. A layout that samples by itself (its params
    include ``seed``) gets ``seed`` too. ``train_reals_dir``: the train reals are a
    further LSUN block rebuilt there instead of the dataset's own. ``train_per_class``
    and ``test_fakes_per_generator`` cap the images per class by a seeded sample (with
    ``cap_test_reals``, a dataset's own test reals are capped like its fakes; a shared real
    set is never capped); the sample is recorded in the manifest. The folder's listing is
    streamed (listed twice when a cap is set: :func:`sample_stream`), never held whole;
    ``workers`` processes decode the images (:func:`build_manifest`).
    """
    import logging

    gens: set[str] = set()

    def entries() -> Iterator[Entry]:
        gens.clear()
        for e in layout_entries(layout, source, dataset_dir, seed=seed, **params):
            gens.add(e.generator)
            if test_reals_from is not None and e.split == "test" and e.label == 0:
                continue
            if train_reals_dir is not None and e.split == "train" and e.label == 0:
                continue
            yield e
        if train_reals_dir is not None:
            for g in sorted(gens):
                yield from lsun_train_reals(train_reals_dir, g, dataset_dir)

    caps = {("train", 0): train_per_class, ("train", 1): train_per_class,
            ("test", 1): test_fakes_per_generator,
            ("test", 0): test_fakes_per_generator if cap_test_reals and test_reals_from is None
            else None}
    stream, notes = sample_stream(entries, caps, seed, Path(dataset_dir).name)
    log = logging.getLogger("bilora.data")
    for n in notes:
        kind = "real" if n["label"] == 0 else "fake"
        if n["available"] < n["cap"]:
            log.warning("%s %s %s: only %d images, fewer than the %d asked; all are used",
                        n["generator"], n["split"], kind, n["available"], n["cap"])
        elif n["available"] > n["cap"]:
            log.info("%s %s %s: a seeded sample of %d of %d images", n["generator"],
                     n["split"], kind, n["kept"], n["available"])

    def verified() -> pd.DataFrame | None:  # called once the stream is read: gens complete
        if test_reals_from is None:
            return None
        reals = shared_test_reals(test_reals_from)
        return pd.concat([reals.assign(generator=g) for g in sorted(gens)], ignore_index=True)

    return build_manifest(dataset_dir, stream, max_rejected_fraction, out=out,
                          progress=progress, verified=verified, sampling=notes,
                          chunk_rows=chunk_rows, workers=workers)
