"""One cell's attack job and one cell's transfer job.

Attack: the seeded subset of every test set is loaded as the detector sees it (its size and
fit, the run's format control), attacked with each grid step, quantised to uint8 inside the
eps ball and saved as PNG (``images/<attack>=<eps>/<sha1 of the original>.png``); the scores
are read back from those files (the published image), and again after JPEG at each
``then_jpeg`` quality. ``scores.parquet`` holds one row per image and condition, the clean
scores (``attack`` none) included.

Transfer: the PNGs a source cell saved are scored by another detector through its own
loader (its size and fit); every row keeps the sha1 of the image it scored.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bilora.atomic import atomic_path
from bilora.attacks.plan import AttackSpec
from bilora.attacks.subset import attack_subset
from bilora.attacks.white_box import attack_batch
from bilora.data.dataset import ImageTable
from bilora.evaluation import loader, predict, progress_bar

log = logging.getLogger("bilora.attacks")

SCORES = "scores.parquet"
COLUMNS = ["test", "label", "sha1", "attack", "eps", "post", "p_fake", "image", "image_sha1",
           "linf"]


def _png(arr: np.ndarray, path: Path) -> str:
    """Write a uint8 CHW image as PNG; its sha1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0))).save(path, format="PNG")
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _score_files(detector, table: pd.DataFrame, batch_size: int, quality: int | None,
                 desc: str, progress: bool) -> np.ndarray:
    """P(fake) of the image files of ``table`` (``abspath``, ``sha1``, ``label``) through the
    detector's loader, after JPEG at ``quality`` when given."""
    ds = ImageTable(table, detector.input_size, None, quality, fit=detector.input_fit)
    return predict(detector, ds, batch_size, desc=desc, progress=progress)[0].numpy()


def attack_cell(detector, rows: pd.DataFrame, spec: AttackSpec, out_dir: str | Path,
                progress: bool = True) -> pd.DataFrame:
    """Attack ``detector`` on the subset of test ``rows``; write the PNGs and ``scores.parquet``
    into ``out_dir`` atomically (nothing is left there on failure). Returns the scores."""
    from bilora.data.manifest import write_parquet_atomic

    torch.manual_seed(spec["seed"])
    subset = attack_subset(rows, spec["max_images"], spec["seed"])
    unique = subset.drop_duplicates("sha1").reset_index(drop=True)
    ds = ImageTable(unique, detector.input_size, None, spec["jpeg_quality"],
                    fit=detector.input_fit)
    posts: list[int | None] = [None, *spec["then_jpeg"]]
    records: list[pd.DataFrame] = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        clean_u8, adv = [], {s["name"]: [] for s in spec["steps"]}
        for images, labels in progress_bar(loader(ds, spec["batch_size"], 0, detector.device),
                                           f"attacking {len(unique)} images", progress):
            clean_u8.append(images.numpy())
            for name, arr in attack_batch(detector, images, labels, spec["steps"],
                                          spec["batch_size"]).items():
                adv[name].append(arr)
        clean = np.concatenate(clean_u8) if clean_u8 else np.zeros((0, 3, 1, 1), np.uint8)
        conditions = [("none", 0.0, "none", clean)] + [
            (s["attack"], s["eps"], s["name"], np.concatenate(adv[s["name"]]))
            for s in spec["steps"]]
        for attack, eps, name, arrays in conditions:
            rel = [f"images/{name}/{sha}.png" for sha in unique["sha1"]]
            digests = [_png(a, tmp / r) for a, r in zip(arrays, rel, strict=True)]
            linf = np.abs(arrays.astype(np.int16) - clean.astype(np.int16)).reshape(
                len(arrays), -1).max(axis=1, initial=0)
            table = pd.DataFrame({"abspath": [str(tmp / r) for r in rel], "sha1": digests,
                                  "label": unique["label"].astype(int),
                                  "manifest": f"the attack of {spec['detector_id']}"})
            for q in posts:
                post = "none" if q is None else f"jpeg={q}"
                p = _score_files(detector, table, spec["batch_size"], q, f"{name} {post}",
                                 progress)
                records.append(pd.DataFrame({
                    "sha1": unique["sha1"], "attack": attack, "eps": eps, "post": post,
                    "p_fake": p, "image": rel, "image_sha1": digests, "linf": linf}))
        per_image = pd.concat(records, ignore_index=True)
        scores = subset[["generator", "label", "sha1"]].rename(columns={"generator": "test"}) \
            .merge(per_image, on="sha1", how="left")[COLUMNS]
        write_parquet_atomic(scores, tmp / SCORES, {"detector": spec["detector_id"]})
    return scores


def transfer_cell(detector, sources: Sequence[tuple[str, str | Path]], batch_size: int,
                  progress: bool = True) -> pd.DataFrame:
    """Scores by ``detector`` of each source cell's adversarial images (``sources``: (source
    detector id, its attack folder)); one row per source row, with the source's image sha1."""
    frames = []
    for source, folder in sources:
        folder = Path(folder)
        rows = pd.read_parquet(folder / SCORES)
        for post, part in rows.groupby("post", sort=False):
            q = None if post == "none" else int(str(post).split("=", 1)[1])
            uniq = part.drop_duplicates("image").reset_index(drop=True)
            table = pd.DataFrame({"abspath": [str(folder / i) for i in uniq["image"]],
                                  "sha1": uniq["image_sha1"], "label": uniq["label"],
                                  "manifest": str(folder / SCORES)})
            p = _score_files(detector, table, batch_size, q, f"from {source} {post}", progress)
            scored = dict(zip(uniq["image"], p, strict=True))
            sel = rows[rows["post"] == post].copy()
            sel["p_fake"] = sel["image"].map(scored)
            sel["source"] = source
            frames.append(sel)
    if not frames:
        return pd.DataFrame(columns=["source", *COLUMNS])
    return pd.concat(frames, ignore_index=True)[["source", *COLUMNS]]


def source_fingerprints(sources: Sequence[tuple[str, str | Path]]) -> dict[str, Any]:
    """Source id -> sha1 of the source cell's scores file (which lists its images' sha1)."""
    return {s: hashlib.sha1((Path(f) / SCORES).read_bytes()).hexdigest() for s, f in sources}
