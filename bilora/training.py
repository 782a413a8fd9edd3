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
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bilora.api.detector import Detector
from bilora.atomic import atomic_path, derive_seed

log = logging.getLogger("bilora.training")
CHECKPOINT = "last.pt"




class EpochOrder(torch.utils.data.Sampler):
    """The batch order of epoch ``e``: a permutation seeded by (seed, e) alone, so a resumed
    run sees the order an uninterrupted one would."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, "order"))
        return iter(torch.randperm(self.n, generator=gen).tolist())


def make_optimizer(params: list[torch.nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam (the paper's) or AdamW, from the detector's ``train`` section."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg["optimizer"]]
    return cls(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def learning_rate(cfg: dict[str, Any], step: int, total: int) -> float:
    """The learning rate of optimisation step ``step`` of ``total`` (``train.schedule``).

    A function of the step alone, so a resumed run follows the same schedule.
    """
    if cfg["schedule"] == "cosine":
        return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if cfg["schedule"] == "step":  # the epoch of the step, over the decay period
        epoch = step // max(1, total // cfg["epochs"])
        return cfg["lr"] * cfg["step"]["gamma"] ** (epoch // cfg["step"]["every_epochs"])
    return cfg["lr"]


def augment(images: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    """The ``train.augment`` of a uint8 NCHW batch, drawn from torch's (seeded) RNG.

    ``hflip`` mirrors half the images about a pixel boundary that is a multiple of their
    width (flip, then shift by one pixel): a period that divides the width keeps its phase,
    so 8-pixel decoder blocks or 2- and 4-pixel upsampling patterns survive the flip.
    """
    if cfg["augment"]["hflip"]:
        flip = torch.rand(images.shape[0]) < 0.5
        mirrored = images.flip(-1).roll(1, -1)
        images = torch.where(flip[:, None, None, None], mirrored, images)
    return images


def augments(cfg: dict[str, Any]) -> bool:
    """Whether training applies any random augmentation."""
    return any(cfg["augment"].values())


def train_detector(
    detector: Detector,
    dataset: torch.utils.data.Dataset,
    cfg: dict[str, Any],
    seed: int,
    checkpoint_dir: str | os.PathLike,
    run_fingerprint: str,
    num_workers: int = 0,
    progress: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[dict[str, float]]:
    """Train ``detector`` for ``cfg['epochs']`` epochs; return the per-epoch history.

    ``loss_fn(batch, labels)`` replaces ``detector.loss(augment(images), labels)`` when the
    dataset yields something else than images (cached frozen features, never augmented).
    """
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
    sampler = EpochOrder(n, seed)
    # one loader for every epoch: its workers persist, the sampler gives each epoch's order
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg["batch_size"], sampler=sampler, num_workers=num_workers,
        persistent_workers=num_workers > 0, pin_memory=detector.device.type == "cuda")
    for epoch in range(start, cfg["epochs"]):
        torch.manual_seed(derive_seed(seed, epoch, "dropout"))
        sampler.set_epoch(epoch)
        detector.train()
        t0, total, seen = time.time(), 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", disable=not progress,
                   unit="batch", leave=False,
                   mininterval=0.1 if sys.stderr.isatty() else 30)
        for step, (images, labels) in enumerate(bar, start=epoch * len(loader)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, cfg["epochs"] * len(loader))
            loss = (loss_fn(images, labels) if loss_fn is not None
                    else detector.loss(augment(images, cfg), labels))
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
