"""The ``genimage`` layout: GenImage's ``{train,val}/{ai,nature}`` folders.

``ai`` is fake, ``nature`` real (ImageNet); ``split_map`` renames splits (GenImage
``val`` -> ``test``, the default). Two modes:

* one subset, ``generator`` given: ``source`` is one subset folder
  (``<subset>/{train,val}/{ai,nature}``, or a folder holding only it), all of it that
  generator's (paper.yaml's ``genimage_sd14`` and ``genimage_glide``);
* GenImage in full, ``generators`` given: ``source`` is the GenImage root holding the
  published folders ``<Generator>/<subfolder>/{train,val}/{ai,nature}``; each id below
  maps to its folder (:data:`PUBLISHED`), and each generator's test set is its own
  ``val/{ai,nature}`` (its reals are its own ImageNet ``nature`` images). The ids are
  those paper.yaml gives SD v1.4 and GLIDE (``SD14``, ``GLIDE``) and the like for the rest:

  ==========  =============================================
  id          folder under the GenImage root
  ==========  =============================================
  SD14        stable_diffusion_v_1_4/imagenet_ai_0419_sdv4
  SD15        stable_diffusion_v_1_5/imagenet_ai_0424_sdv5
  ADM         ADM/imagenet_ai_0508_adm
  BigGAN      BigGAN/imagenet_ai_0419_biggan
  GLIDE       glide/imagenet_glide
  Midjourney  Midjourney/imagenet_midjourney
  VQDM        VQDM/imagenet_ai_0419_vqdm
  Wukong      wukong/imagenet_ai_0424_wukong
  ==========  =============================================

  A config's generator ids are unique across its datasets: GenImage's ``ADM`` cannot sit
  beside Ricker et al.'s ``ADM`` in one config (leave one out).

Both modes stream their listing (:func:`bilora.data.folders.iter_image_paths`): the full
set is ~1.35M files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from bilora.api.layouts import Layout
from bilora.data.folders import (
    Listing,
    SourceError,
    find_root,
    iter_image_paths,
    manifest_path,
)
from bilora.data.manifest import Entry

PUBLISHED: dict[str, str] = {
    "SD14": "stable_diffusion_v_1_4/imagenet_ai_0419_sdv4",
    "SD15": "stable_diffusion_v_1_5/imagenet_ai_0424_sdv5",
    "ADM": "ADM/imagenet_ai_0508_adm",
    "BigGAN": "BigGAN/imagenet_ai_0419_biggan",
    "GLIDE": "glide/imagenet_glide",
    "Midjourney": "Midjourney/imagenet_midjourney",
    "VQDM": "VQDM/imagenet_ai_0419_vqdm",
    "Wukong": "wukong/imagenet_ai_0424_wukong",
}
"""GenImage in full: generator id -> its published folder under the GenImage root."""


def _subset_entries(root: Path, generator: str, split_map: Mapping[str, str],
                    dataset_dir: str | os.PathLike) -> Iterator[Entry]:
    """One subset folder's entries, streamed; an empty folder is an error."""
    for src_split, split in split_map.items():
        for sub, label in (("nature", 0), ("ai", 1)):
            folder = root / src_split / sub
            count = 0
            for p in iter_image_paths(folder):
                count += 1
                yield Entry(manifest_path(p, dataset_dir), label, generator, split)
            if not count:
                raise SourceError(f"no images in {folder}")


def genimage_entries(source: str | os.PathLike, dataset_dir: str | os.PathLike,
                     generator: str | None = None,
                     split_map: Mapping[str, str] | None = None,
                     generators: Sequence[str] | None = None) -> Listing:
    """Entries of one GenImage subset (``generator``) or of the published GenImage root
    (``generators``, ids of :data:`PUBLISHED`); see the module docstring. The folders are
    checked now, the images listed as the result is iterated (each time anew)."""
    split_map = dict(split_map) if split_map else {"train": "train", "val": "test"}
    if (generator is None) == (not generators):
        raise SourceError("the genimage layout takes one of --generator (one subset folder) "
                          "or --generators (ids of the GenImage root's published folders)")
    if generator is not None:
        subsets = [(generator, find_root(Path(source), list(split_map), "genimage"))]
    else:
        root = Path(source)
        if not root.is_dir():
            raise SourceError(f"genimage source folder not found: {root}")
        unknown = [g for g in generators if g not in PUBLISHED]
        if unknown:
            raise SourceError(f"genimage generators {unknown} are not GenImage's published "
                              f"ones ({', '.join(PUBLISHED)})")
        for g in generators:
            if not (root / PUBLISHED[g]).is_dir():
                raise SourceError(f"GenImage folder missing for {g}: {root / PUBLISHED[g]} "
                                  f"(the genimage layout expects <root>/{PUBLISHED[g]}"
                                  "/{train,val}/{ai,nature})")
        subsets = [(g, root / PUBLISHED[g]) for g in generators]
    for _, sub in subsets:
        for src_split in split_map:
            for kind in ("nature", "ai"):
                folder = sub / src_split / kind
                if not folder.is_dir():
                    raise SourceError(f"GenImage folder missing: {folder} (expected "
                                      f"{{train,val}}/{{ai,nature}} under {sub})")
    return Listing(lambda: (e for g, sub in subsets
                            for e in _subset_entries(sub, g, split_map, dataset_dir)))


LAYOUT = Layout(mapper=genimage_entries, test_reals="own GenImage nature (ImageNet) reals",
                summary="<subset>/<split>/{nature,ai} (generator), or the GenImage root's "
                        "published <Generator>/<subset> folders (generators)",
                params=("generator", "split_map", "generators"),
                schema={"properties": {"generators": {
                    "items": {"enum": list(PUBLISHED)},
                    "description": "genimage layout: ids of the published folders under "
                                   "the GenImage root (path)."}}})
