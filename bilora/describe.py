"""Model summaries built on the meta device: parameter counts without weights or network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARCH_DIR = Path(__file__).resolve().parent / "arch"
# hub ids whose architecture ships with the package
SHIPPED = {"Salesforce/blip2-opt-2.7b": "blip2-opt-2.7b.json",
           "ybelkada/blip2-opt-2.7b-fp16-sharded": "blip2-opt-2.7b.json"}


def blip2_config(det_cfg: dict[str, Any]):
    """The ``Blip2Config`` a Bi-LoRA config section would load, without downloading it."""
    from transformers import Blip2Config

    base = det_cfg["base_model"]
    if base["source"] == "tiny":
        from bilora.tiny_blip2 import tiny_config

        return tiny_config(base["tiny"])
    name = base["name_or_path"]
    if name in SHIPPED:
        data = json.loads((ARCH_DIR / SHIPPED[name]).read_text())
        data.pop("_comment", None)
        return Blip2Config(**data)
    local = Path(name) / "config.json"
    if local.exists():
        return Blip2Config.from_pretrained(name)
    raise FileNotFoundError(f"no architecture known for base_model.name_or_path {name!r}: "
                            f"shipped: {', '.join(SHIPPED)}; or give a local checkpoint folder")


def meta_bilora(det_cfg: dict[str, Any]):
    """The PEFT-wrapped BLIP-2 of a Bi-LoRA config, on the meta device."""
    import torch
    from peft import get_peft_model
    from transformers import Blip2ForConditionalGeneration

    from bilora.detector import lora_config

    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(blip2_config(det_cfg))
        return get_peft_model(model, lora_config(det_cfg))


def describe(det_cfg: dict[str, Any]) -> list[str]:
    """Lines of a model summary of a detector section (its kind's describer, no weights)."""
    from bilora.registry import kind, resolve

    return resolve(kind(det_cfg["kind"]).describe)(det_cfg)


def describe_bilora(det_cfg: dict[str, Any]) -> list[str]:
    """Bi-LoRA's summary: total and trainable parameters, LoRA targets."""
    from bilora.detector import lora_module_names

    model = meta_bilora(det_cfg)
    trainable, total = model.get_nb_trainable_parameters()
    mods = lora_module_names(model)
    base = det_cfg["base_model"]
    name = base["name_or_path"] if base["source"] == "pretrained" else "tiny random base"
    lines = [f"model: Blip2ForConditionalGeneration + LoRA ({name})",
             f"total parameters: {total:,}",
             f"trainable parameters: {trainable:,} ({100 * trainable / total:.3f} %)",
             f"LoRA r={det_cfg['lora']['r']} alpha={det_cfg['lora']['alpha']} "
             f"dropout={det_cfg['lora']['dropout']} on {len(mods)} modules:"]
    lines += [f"  {m}" for m in mods]
    if det_cfg["extra_trainable"]:
        lines.append("also trained: " + ", ".join(det_cfg["extra_trainable"]))
    return lines


def describe_module(det_cfg: dict[str, Any]) -> list[str]:
    """A generic summary: the detector built on the meta device, its parameter counts."""
    import torch

    from bilora.detectors import detector_class

    with torch.device("meta"):
        det = detector_class(det_cfg["kind"]).build(
            {**det_cfg, "pretrained": False} if "pretrained" in det_cfg else det_cfg, seed=0)
    counts = det.parameter_counts()
    return [f"model: {det.describe()}", f"total parameters: {counts['total']:,}",
            f"trainable parameters: {counts['trainable']:,}"]
