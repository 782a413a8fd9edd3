"""Score trained detectors on test generators x perturbations; keep per-image scores.

Evaluation knows only the detector interface (``predict_proba``). Each distinct image
is scored once per condition (perturbation, level) even when several test sets share it
(the shared real set), and the scores are joined back onto every manifest row.

A scoring job resumes: each finished condition is written atomically to
``<parts_dir>/<perturbation>=<level>.parquet`` with a fingerprint of everything that
determines it (model, condition, seeds, protocol, format control, test rows); a rerun
reuses the parts whose fingerprint matches and scores only what is missing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bilora.config import condition_name
from bilora.data.dataset import ImageTable, Perturbation
from bilora.data.perturbations import parse_level
from bilora.score_parts import NO_TOKEN, SCORE_COLUMNS, join_scores, read_part, write_part

__all__ = ["NO_TOKEN", "SCORE_COLUMNS", "predict", "read_part", "score_group", "score_table"]

log = logging.getLogger("bilora.evaluation")


def progress_bar(iterable, desc: str, progress: bool, total: int | None = None,
                 unit: str = "batch"):
    """tqdm over ``iterable``: live on a terminal, a line every 30 s in a log file."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, disable=not progress, unit=unit, leave=False,
                total=total, mininterval=0.1 if sys.stderr.isatty() else 30)


def loader(dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int,
           device: torch.device) -> torch.utils.data.DataLoader:
    """An ordered loader of a scoring dataset (pinned memory for a GPU)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       num_workers=num_workers,
                                       pin_memory=device.type == "cuda",
                                       persistent_workers=False)


@torch.no_grad()
def predict(detector, dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int = 0,
            desc: str = "scoring", progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(P(fake), the generated caption token or -1) for every item of ``dataset``, in order."""
    p_out, t_out = [], []
    for images, _ in progress_bar(loader(dataset, batch_size, num_workers, detector.device),
                                  desc, progress):
        p, t = detector.predict_tokens(images)
        p_out.append(p.float().cpu())
        t_out.append(t.to(torch.int32).cpu())
    if not p_out:
        return torch.empty(0), torch.empty(0, dtype=torch.int32)
    return torch.cat(p_out), torch.cat(t_out)


def unique_images(rows: pd.DataFrame) -> pd.DataFrame:
    """The distinct images of test rows (the shared real set once)."""
    return rows.drop_duplicates("abspath").reset_index(drop=True)


def score_conditions(rows: pd.DataFrame, conditions: Sequence[tuple[str, str]],
                     score: Callable[[ImageTable, str, list[str]],
                                     dict[str, tuple[torch.Tensor, torch.Tensor]]],
                     dataset: Callable[[pd.DataFrame, Perturbation | None], ImageTable],
                     seed: int, protocol: str,
                     parts: dict[str, tuple[Path, str]] | None = None,
                     trigger: dict | None = None) -> dict[str, pd.DataFrame]:
    """Scores of several models (keys of ``parts``) under every condition, resumable.

    ``score(dataset, desc, models)`` returns (P(fake), token) of every image of ``dataset``
    for each of ``models``, those still to score; ``parts`` maps a model to (its parts
    folder, its fingerprint). ``trigger``: the backdoor trigger of the condition
    ``trigger=patch``.
    Returns each model's scores in ``SCORE_COLUMNS``, conditions in order.
    """
    unique = unique_images(rows)
    parts = parts or {}
    out: dict[str, list[pd.DataFrame]] = {m: [] for m in parts}
    for kind, level in conditions:
        name = condition_name(kind, level)
        done = {m: read_part(folder / f"{name}.parquet", f"{fp}/{name}")
                for m, (folder, fp) in parts.items()}
        todo = [m for m, frame in done.items() if frame is None]
        if todo:
            perturb = None if kind == "none" else Perturbation(
                kind, parse_level(level), seed, protocol,
                trigger if kind == "trigger" else None)
            scores = score(dataset(unique, perturb), name, todo)
            for m in todo:
                p_fake, token = scores[m]
                frame = join_scores(rows, unique, p_fake.numpy(), token.numpy(), kind, level)
                folder, fp = parts[m]
                write_part(frame, folder / f"{name}.parquet", f"{fp}/{name}")
                done[m] = frame
        if len(todo) < len(parts):
            log.info("%s: reused the finished scores of %d model(s)", name,
                     len(parts) - len(todo))
        for m, frame in done.items():
            out[m].append(frame)
    return {m: pd.concat(frames, ignore_index=True)[SCORE_COLUMNS] for m, frames in out.items()}


def score_table(detector, rows: pd.DataFrame, conditions: Sequence[tuple[str, str]], seed: int,
                batch_size: int, num_workers: int = 0, progress: bool = True,
                protocol: str = "corrected", jpeg_quality: int | None = None,
                parts_dir: str | Path | None = None, fingerprint: str = "",
                trigger: dict | None = None) -> pd.DataFrame:
    """Per-image scores of ``rows`` (test manifest rows) under every condition, for one
    detector; with ``parts_dir``, each finished condition is kept and reused on a rerun."""
    import tempfile

    detector.eval()

    def dataset(unique: pd.DataFrame, perturb: Perturbation | None) -> ImageTable:
        return ImageTable(unique, detector.input_size, perturb, jpeg_quality,
                          fit=detector.input_fit)

    def score(ds: ImageTable, desc: str, models: list[str]
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {"model": predict(detector, ds, batch_size, num_workers, desc, progress)}

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(parts_dir) if parts_dir is not None else Path(tmp)
        return score_conditions(rows, conditions, score, dataset, seed, protocol,
                                {"model": (folder, fingerprint)}, trigger)["model"]


def score_group(group: Any, rows: pd.DataFrame, condition: tuple[str, str],
                parts: Sequence[tuple[Path, str]], seed: int, protocol: str,
                batch_size: int, num_workers: int = 0, jpeg_quality: int | None = None,
                progress: bool = True, trigger: dict | None = None) -> list[bool]:
    """Score every member of a shared-base ``group`` (a kind's ``group_scorer``: ``predict``,
    ``input_size``, ``input_fit``, ``device``) under one condition into its cell's parts folder
    (``parts[i]`` = (folder, fingerprint)); adapters whose part is already there and
    current are skipped. Returns, per adapter, whether it was scored now."""
    from bilora.data.dataset import ImageTable

    def dataset(unique: pd.DataFrame, perturb: Perturbation | None) -> ImageTable:
        return ImageTable(unique, group.input_size, perturb, jpeg_quality, fit=group.input_fit)

    scored: list[int] = []

    def score(ds: ImageTable, desc: str, models: list[str]
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        which = [int(m) for m in models]
        scored.extend(which)
        out: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in which}
        for images, _ in progress_bar(loader(ds, batch_size, num_workers, group.device),
                                      f"{desc} x {len(which)} adapters", progress):
            for i, (p, t) in group.predict(images, which).items():
                out[i].append((p.float().cpu(), t.to(torch.int32).cpu()))
        return {str(i): (torch.cat([p for p, _ in v]), torch.cat([t for _, t in v]))
                for i, v in out.items()}

    score_conditions(rows, [condition], score, dataset, seed, protocol,
                     {str(i): part for i, part in enumerate(parts)}, trigger)
    return [i in scored for i in range(len(parts))]
