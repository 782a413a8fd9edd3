"""Several Bi-LoRA adapters over one frozen base, scored with one image pass.

All adapters of a scoring group share the base checkpoint, so the image path up to the
deepest point none of them trains (the projected query embeddings when only LoRA
trains, the vision tower's output when an adapter also trains the Q-Former) is the same
for all: it is computed once per test image and condition, and every adapter (PEFT's
``load_adapter`` / ``set_adapter`` on one model) runs from there. Each adapter's scores
are written as its cell's finished condition (:func:`bilora.evaluation.score_group`), exactly
what the cell's own scoring job would write, so a cell scored alone or in its group is the
same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bilora.api.detector import SharedGroup
from bilora.errors import ConfigError
from bilora.kinds.bilora.detector import BiLoRADetector, base_of, saved_base

log = logging.getLogger("bilora.group_scoring")


def adapter_stage(model, adapter: str, base) -> str | None:
    """The deepest point of the image path of ``base`` (a VLM base class) that ``adapter``
    leaves untouched."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    touched = [name for name, m in model.named_modules()
               if (isinstance(m, LoraLayer) and adapter in m.lora_A)
               or (isinstance(m, ModulesToSaveWrapper) and adapter in m.modules_to_save)]
    return base.frozen_stage(touched)


class AdapterGroup(SharedGroup):
    """One VLM base with several trained adapters; a detector view per adapter (the Bi-LoRA
    kind's group scorer: :func:`bilora.evaluation.score_group` runs it)."""

    def __init__(self, folders: Sequence[str | os.PathLike], configs: Sequence[dict[str, Any]],
                 device: torch.device):
        from peft import PeftModel

        folders = [Path(f) for f in folders]
        bases = {saved_base(f) for f in folders}
        loading = {(c["dtype"], c["attn_implementation"], c["load_in_8bit"]) for c in configs}
        if len(bases) != 1 or len(loading) != 1:
            raise ConfigError(f"a scoring group needs one base loaded one way; got "
                              f"{sorted(bases)} and {sorted(loading)} (evaluation.sharing: "
                              "cell scores them apart)")
        base = bases.pop()
        vlm = base_of(configs[0])
        model = vlm.load_model(base, configs[0])
        self.names = [f"cell{i}" for i in range(len(folders))]
        model = PeftModel.from_pretrained(model, folders[0], adapter_name=self.names[0])
        for name, folder in zip(self.names[1:], folders[1:], strict=True):
            model.load_adapter(folder, adapter_name=name)
        self.model = model.to(device).eval()
        self.views = [BiLoRADetector(cfg, self.model, vlm.load_processor(folder), base).eval()
                      for cfg, folder in zip(configs, folders, strict=True)]
        stages = [adapter_stage(self.model, n, vlm) for n in self.names]
        if None in stages:
            raise ConfigError("an adapter of the group trains the vision tower: no image "
                              "features can be shared (use evaluation.sharing: cell)")
        self.stage = min(stages, key=vlm.stages.index)
        log.info("%d adapters over %s share the image path up to %s", len(folders), base,
                 self.stage)

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
