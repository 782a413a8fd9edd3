"""Several Bi-LoRA adapters over one frozen base, scored with one image pass.

All adapters of a scoring group share the base checkpoint, so the image path up to the
deepest point none of them trains (the projected query embeddings when only LoRA
trains, the vision tower's output when an adapter also trains the Q-Former) is the same
for all: it is computed once per test image and condition, and every adapter (PEFT's
``load_adapter`` / ``set_adapter`` on one model) runs from there. Each adapter's scores
are written as its cell's finished condition (:mod:`bilora.evaluation`), exactly what the
cell's own scoring job would write, so a cell scored alone or in its group is the same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bilora.detector import STAGES, BiLoRADetector, saved_base
from bilora.errors import ConfigError

log = logging.getLogger("bilora.group_scoring")


def adapter_stage(model, adapter: str) -> str | None:
    """The deepest point of the image path that ``adapter`` leaves untouched."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    touched = [name for name, m in model.named_modules()
               if (isinstance(m, LoraLayer) and adapter in m.lora_A)
               or (isinstance(m, ModulesToSaveWrapper) and adapter in m.modules_to_save)]
    if any(".vision_model." in f".{n}." for n in touched):
        return None
    if any(".qformer" in f".{n}" or "query_tokens" in n for n in touched):
        return "vision"
    if any(".language_projection" in f".{n}" for n in touched):
        return "qformer"
    return "projected"


class AdapterGroup:
    """One BLIP-2 base with several trained adapters; a detector view per adapter."""

    def __init__(self, folders: Sequence[str | os.PathLike], configs: Sequence[dict[str, Any]],
                 device: torch.device):
        from peft import PeftModel

        from bilora.detector import _processor, load_base

        folders = [Path(f) for f in folders]
        bases = {saved_base(f) for f in folders}
        loading = {(c["dtype"], c["attn_implementation"], c["load_in_8bit"]) for c in configs}
        if len(bases) != 1 or len(loading) != 1:
            raise ConfigError(f"a scoring group needs one base loaded one way; got "
                              f"{sorted(bases)} and {sorted(loading)} (evaluation.sharing: "
                              "cell scores them apart)")
        base = bases.pop()
        model = load_base(base, configs[0])
        self.names = [f"cell{i}" for i in range(len(folders))]
        model = PeftModel.from_pretrained(model, folders[0], adapter_name=self.names[0])
        for name, folder in zip(self.names[1:], folders[1:], strict=True):
            model.load_adapter(folder, adapter_name=name)
        self.model = model.to(device).eval()
        self.views = [BiLoRADetector(cfg, self.model, _processor(folder), base).eval()
                      for cfg, folder in zip(configs, folders, strict=True)]
        stages = [adapter_stage(self.model, n) for n in self.names]
        if None in stages:
            raise ConfigError("an adapter of the group trains the vision tower: no image "
                              "features can be shared (use evaluation.sharing: cell)")
        self.stage = min(stages, key=STAGES.index)
        log.info("%d adapters over %s share the image path up to %s", len(folders), base,
                 self.stage)

    @property
    def input_size(self) -> int:
        return self.views[0].input_size

    @torch.no_grad()
    def predict(self, images: torch.Tensor, which: Sequence[int]
                ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """(P(fake), token) of the adapters ``which`` from one pass of the shared path."""
        x = self.views[0].features(images, self.stage)
        out = {}
        for i in which:
            self.model.set_adapter(self.names[i])
            out[i] = self.views[i].predict_from_features(x, self.stage)
        return out


def score_group(group: AdapterGroup, rows: pd.DataFrame, condition: tuple[str, str],
                parts: Sequence[tuple[Path, str]], seed: int, protocol: str,
                batch_size: int, num_workers: int = 0, jpeg_quality: int | None = None,
                progress: bool = True) -> list[bool]:
    """Score every adapter of ``group`` under one condition into its cell's parts folder
    (``parts[i]`` = (folder, fingerprint)); adapters whose part is already there and
    current are skipped. Returns, per adapter, whether it was scored now."""
    from bilora.data.dataset import ImageTable, Perturbation
    from bilora.evaluation import loader, progress_bar, score_conditions

    def dataset(unique: pd.DataFrame, perturb: Perturbation | None) -> ImageTable:
        return ImageTable(unique, group.input_size, perturb, jpeg_quality)

    scored: list[int] = []

    def score(ds: ImageTable, desc: str, models: list[str]
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        which = [int(m) for m in models]
        scored.extend(which)
        out: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in which}
        device = next(group.model.parameters()).device
        for images, _ in progress_bar(loader(ds, batch_size, num_workers, device),
                                      f"{desc} x {len(which)} adapters", progress):
            for i, (p, t) in group.predict(images, which).items():
                out[i].append((p.float().cpu(), t.to(torch.int32).cpu()))
        return {str(i): (torch.cat([p for p, _ in v]), torch.cat([t for _, t in v]))
                for i, v in out.items()}

    score_conditions(rows, [condition], score, dataset, seed, protocol,
                     {str(i): part for i, part in enumerate(parts)})
    return [i in scored for i in range(len(parts))]
