"""LoRA targets resolved per base: the module names a section's ``lora.target_modules`` adapt,
checked against the base's language model.

PEFT matches a target name against the end of every module name of the whole model, so a
name written for one language model can match nothing in another (a T5 names its attention
``q``, ``k``) or also adapt the vision tower (BLIP-2's ViT and Q-Former name their MLP layers
``fc1``, ``fc2`` and ``dense`` too). Both are config errors naming the key; ``lora.scope:
all`` allows targets outside the language model on purpose.
"""

from __future__ import annotations

from typing import Any

from bilora.errors import ConfigError


def in_language_model(name: str, prefix: str) -> bool:
    """Whether module ``name`` (of the unwrapped base) lies in the language model ``prefix``."""
    return name == prefix or name.startswith(prefix + ".")


def resolve_targets(model: Any, section: dict[str, Any], key: str = "lora") -> list[str]:
    """Full names of the modules of the unwrapped base ``model`` that the section's LoRA
    adapts, by PEFT's own matching. ConfigError naming ``<key>.target_modules`` when they
    match nothing, or match outside the base's language model without ``<key>.scope: all``."""
    import torch
    from peft.tuners.tuners_utils import check_target_module_exists

    from bilora.kinds.bilora import base_of
    from bilora.kinds.bilora.detector import lora_config

    base = base_of(section)
    conf = lora_config(section)
    targets = list(section["lora"]["target_modules"])
    prefix = base.language_model
    names = [n for n, _ in model.named_modules() if n]
    hits = [n for n in names if check_target_module_exists(conf, n)]
    whole = list(section["extra_trainable"])
    if not hits and whole:  # PEFT never adapts a module that trains whole (modules_to_save)
        conf.modules_to_save = None
        if any(check_target_module_exists(conf, n) for n in names):
            raise ConfigError(f"{key}.target_modules: {targets} match only modules inside "
                              f"extra_trainable ({', '.join(whole)}), which train whole and "
                              "get no LoRA")
    if not hits:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if in_language_model(n, prefix) and isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"{key}.target_modules: {targets} match no module of the "
                          f"{base.display} base; its language model's linear layers are "
                          f"named {', '.join(linear)}")
    outside = [n for n in hits if not in_language_model(n, prefix)]
    if outside and section["lora"].get("scope", "language_model") != "all":
        shown = ", ".join(outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3
                                          else "")
        raise ConfigError(f"{key}.target_modules: {targets} also match {len(outside)} "
                          f"module(s) outside the {base.display} language model "
                          f"({prefix}): {shown}; name only language-model layers, or set "
                          f"{key}.scope: all to adapt them on purpose")
    return hits
