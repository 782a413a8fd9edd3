"""Bi-LoRA's ``bilora describe`` summary, built on the meta device (no weights, no network)."""

from __future__ import annotations

from typing import Any


def meta_bilora(det_cfg: dict[str, Any]):
    """The PEFT-wrapped base of a Bi-LoRA section, on the meta device."""
    import torch
    from peft import get_peft_model

    from bilora.kinds.bilora.detector import base_of, lora_config
    from bilora.kinds.bilora.targets import resolve_targets

    base = base_of(det_cfg)
    with torch.device("meta"):
        model = base.model_class()(base.meta_config(det_cfg["base_model"]))
        resolve_targets(model, det_cfg)
        return get_peft_model(model, lora_config(det_cfg))


def describe_bilora(det_cfg: dict[str, Any]) -> list[str]:
    """Total and trainable parameters, the modules LoRA adapts, the memory estimate."""
    from bilora.kinds.bilora.detector import base_of, lora_module_names

    base = base_of(det_cfg)
    model = meta_bilora(det_cfg)
    trainable, total = model.get_nb_trainable_parameters()
    mods = lora_module_names(model)
    section = det_cfg["base_model"]
    name = section["name_or_path"] if section["source"] == "pretrained" else "tiny random base"
    lines = [f"model: {base.model_class().__name__} + LoRA ({name})",
             f"total parameters: {total:,}",
             f"trainable parameters: {trainable:,} ({100 * trainable / total:.3f} %)",
             f"LoRA r={det_cfg['lora']['r']} alpha={det_cfg['lora']['alpha']} "
             f"dropout={det_cfg['lora']['dropout']} on {len(mods)} modules "
             f"({_scope(det_cfg, base)}):"]
    lines += [f"  {m}" for m in mods]
    if det_cfg["extra_trainable"]:
        lines.append("also trained: " + ", ".join(det_cfg["extra_trainable"]))
    return lines + base.memory_lines(det_cfg, model)


def _scope(det_cfg: dict[str, Any], base: Any) -> str:
    if det_cfg["lora"].get("scope", "language_model") == "all":
        return "lora.scope: all, the whole model"
    return f"the language model only: {base.language_model}"
