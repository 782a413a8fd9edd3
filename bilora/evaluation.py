"""Score a trained detector on test generators x perturbations; keep per-image scores.

Evaluation knows only the detector interface (``predict_proba``). Each distinct
image is scored once per (perturbation, level) even when several test sets share
it (the shared real set), and the scores are joined back onto every manifest row.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pandas as pd
import torch

from bilora.data.dataset import ImageTable
from bilora.data.perturbations import parse_level

SCORE_COLUMNS = ["image", "sha1", "generator", "label", "perturbation", "level", "p_fake"]


@torch.no_grad()
def predict(detector, dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int = 0,
            desc: str = "scoring", progress: bool = True) -> torch.Tensor:
    """P(fake) for every item of ``dataset``, in order."""
    from tqdm import tqdm

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    out = [detector.predict_proba(images).float().cpu()
           for images, _ in tqdm(loader, desc=desc, disable=not progress, unit="batch",
                                 leave=False, mininterval=0.1 if sys.stderr.isatty() else 30)]
    return torch.cat(out) if out else torch.empty(0)


def score_table(detector, rows: pd.DataFrame, conditions: Sequence[tuple[str, str]], seed: int,
                batch_size: int, num_workers: int = 0, progress: bool = True) -> pd.DataFrame:
    """Per-image scores of ``rows`` (test manifest rows) under every condition."""
    detector.eval()
    unique = rows.drop_duplicates("abspath").reset_index(drop=True)
    frames = []
    for kind, level in conditions:
        perturb = None if kind == "none" else (kind, parse_level(level), seed)
        ds = ImageTable(unique, detector.input_size, perturb)
        p = predict(detector, ds, batch_size, num_workers, desc=f"{kind}:{level}",
                    progress=progress)
        scored = pd.DataFrame({"abspath": unique["abspath"], "p_fake": p.numpy()})
        merged = rows.merge(scored, on="abspath", how="left")
        frames.append(pd.DataFrame({
            "image": merged["path"], "sha1": merged["sha1"], "generator": merged["generator"],
            "label": merged["label"].astype("int8"), "perturbation": kind, "level": level,
            "p_fake": merged["p_fake"].astype("float32")}))
    return pd.concat(frames, ignore_index=True)[SCORE_COLUMNS]
