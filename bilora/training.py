"""One training loop for every detector: seeded, resumable, logged.

The batch order of epoch ``e`` and the dropout randomness are derived from
(seed, e), and every epoch ends with an atomic checkpoint holding the detector's
trainable state, the optimizer state and the history. A run killed at any point
and started again resumes after its last finished epoch and ends with the same
weights as an uninterrupted run. A checkpoint written for other settings (its
fingerprint differs) is ignored, never resumed.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bilora.atomic import atomic_path, derive_seed
from bilora.detectors import Detector

log = logging.getLogger("bilora.training")
CHECKPOINT = "last.pt"




def make_optimizer(params: list[torch.nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam (the paper's) or AdamW, from the detector's ``train`` section."""
    name = cfg.get("optimizer", "adam")
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))


def train_detector(
    detector: Detector,
    dataset: torch.utils.data.Dataset,
    cfg: dict[str, Any],
    seed: int,
    checkpoint_dir: str | os.PathLike,
    run_fingerprint: str,
    num_workers: int = 0,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``detector`` for ``cfg['epochs']`` epochs; return the per-epoch history."""
    from tqdm import tqdm

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT
    optimizer = make_optimizer(detector.trainable_parameters(), cfg)
    history: list[dict[str, float]] = []
    start = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=detector.device, weights_only=False)
        if state.get("fingerprint") == run_fingerprint:
            detector.load_checkpoint_state(state["detector"])
            optimizer.load_state_dict(state["optimizer"])
            history, start = state["history"], state["epoch"]
            log.info("resumed from %s after epoch %d of %d", ckpt_path, start, cfg["epochs"])
        else:
            log.warning("ignoring checkpoint %s: written for other settings", ckpt_path)
    n = len(dataset)
    for epoch in range(start, cfg["epochs"]):
        torch.manual_seed(derive_seed(seed, epoch, "dropout"))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(
            derive_seed(seed, epoch, "order"))).tolist()
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, order), batch_size=cfg["batch_size"],
            shuffle=False, num_workers=num_workers)
        detector.train()
        t0, total, seen = time.time(), 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", disable=not progress,
                   unit="batch", leave=False,
                   mininterval=0.1 if sys.stderr.isatty() else 30)
        for images, labels in bar:
            loss = detector.loss(images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
            seen += len(labels)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        record = {"epoch": epoch + 1, "loss": total / max(seen, 1),
                  "seconds": round(time.time() - t0, 3), "images": seen}
        history.append(record)
        log.info("epoch %d/%d loss %.5f time %.1fs", epoch + 1, cfg["epochs"], record["loss"],
                 record["seconds"])
        with atomic_path(ckpt_path) as tmp:
            torch.save({"fingerprint": run_fingerprint, "epoch": epoch + 1, "history": history,
                        "detector": detector.checkpoint_state(),
                        "optimizer": optimizer.state_dict()}, tmp)
    detector.eval()
    return history
