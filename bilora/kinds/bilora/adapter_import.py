"""Import a released Bi-LoRA adapter (the authors' PEFT 0.4 / 0.5 folders) as a saved model.

The authors' ``weights/<g>FineTune/`` folders (Mamadou-Keita/VLM-DETECT) hold an
``adapter_config.json`` written by PEFT 0.4 / 0.5 (``task_type`` null, ``auto_mapping``,
``base_model_name_or_path: ybelkada/blip2-opt-2.7b-fp16-sharded``, keys today's PEFT may
not know) and ``adapter_model.bin`` (a torch pickle whose keys carry no adapter name, e.g.
``base_model.model.language_model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight``),
and no processor. Everything is checked against the PEFT model of the section's base built
on the meta device (no base weights are read): the target modules exist, the weight keys
are exactly those PEFT saves for that config (``get_peft_model_state_dict``), the shapes
match, and the LoRA settings equal the section's. Then the folder ``BiLoRADetector`` saves
is written: today's ``adapter_config.json`` naming the section's base,
``adapter_model.safetensors`` and the base's processor, so ``load_detector`` works as for
a trained cell. Any problem is an :class:`~bilora.errors.ArtifactError` naming the file and
the first keys at fault, raised before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from bilora.errors import ArtifactError, ConfigError

log = logging.getLogger("bilora.adapter_import")

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def _first(keys, n: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def read_lora_config(source: Path):
    """The adapter's ``peft.LoraConfig`` and the keys of its file this PEFT does not know
    (dropped, with a note)."""
    from peft import LoraConfig

    path = source / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read the adapter config: {exc}") from None
    if not isinstance(raw, dict) or raw.get("peft_type", "LORA") != "LORA":
        raise ArtifactError(f"{path}: not a LoRA adapter config (peft_type "
                            f"{raw.get('peft_type') if isinstance(raw, dict) else raw!r})")
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    dropped = sorted(set(raw) - known)
    if dropped:
        log.warning("%s: keys unknown to this PEFT dropped: %s", path, ", ".join(dropped))
    try:
        conf = LoraConfig.from_peft_type(**{k: v for k, v in raw.items() if k in known})
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a valid LoRA config: {exc}") from None
    return conf, dropped


def read_adapter_weights(source: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The adapter's tensors (safetensors preferred, else the torch pickle) and their file."""
    found = [source / n for n in WEIGHT_FILES if (source / n).is_file()]
    if not found:
        raise ArtifactError(f"{source}: no adapter weights ({' or '.join(WEIGHT_FILES)})")
    path = found[0]
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the file's fault
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ArtifactError(f"{path}: unreadable or truncated weights file ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactError(f"{path}: not a state dict of tensors")
    return state, path


def meta_peft_model(cfg: dict[str, Any], base_path: str, lora_conf, config_path: Path):
    """The PEFT model of ``lora_conf`` over the section's base architecture, on the meta
    device."""
    from peft import get_peft_model

    from bilora.kinds.bilora import base_of

    base = base_of(cfg)
    with torch.device("meta"):
        model = base.model_class()(base.meta_config(cfg["base_model"]))
        try:
            return get_peft_model(model, lora_conf)
        except ValueError as exc:  # PEFT: "Target modules {...} not found in the base model"
            raise ArtifactError(f"{config_path}: target_modules "
                                f"{sorted(lora_conf.target_modules or [])} do not fit the base "
                                f"{base_path}: {str(exc).splitlines()[0]}") from None


def check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path
                ) -> dict[str, torch.Tensor]:
    """``state`` in the expected dtypes, when its keys and shapes are exactly those PEFT saves
    for this config; otherwise ArtifactError naming the first keys at fault."""
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing:
        raise ArtifactError(f"{path}: keys missing: {_first(missing)}")
    if unexpected:
        raise ArtifactError(f"{path}: unexpected keys: {_first(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in sorted(expected.items()) if state[k].shape != v.shape]
    if wrong:
        raise ArtifactError(f"{path}: wrong shapes: {_first(wrong, 2)}")
    return {k: state[k].to(expected[k].dtype).contiguous() for k in expected}


def check_section(lora_conf, cfg: dict[str, Any], path: Path) -> None:
    """The adapter's LoRA settings must be the section's (detector.json says what ran)."""
    lora = cfg["lora"]
    pairs = {"r": (lora_conf.r, lora["r"]), "alpha": (lora_conf.lora_alpha, lora["alpha"]),
             "dropout": (lora_conf.lora_dropout, lora["dropout"]),
             "target_modules": (sorted(lora_conf.target_modules or []),
                                sorted(lora["target_modules"])),
             "bias": (lora_conf.bias, lora["bias"])}
    differ = [f"lora.{k}: adapter {a!r}, section {b!r}" for k, (a, b) in pairs.items() if a != b]
    if sorted(lora_conf.modules_to_save or []) != sorted(cfg["extra_trainable"]):
        differ.append(f"extra_trainable: adapter {lora_conf.modules_to_save!r}, section "
                      f"{cfg['extra_trainable']!r}")
    if differ:
        raise ConfigError(f"{path} differs from its detector section: {'; '.join(differ)}; "
                          "set the section to the adapter's settings")


def import_adapter(cls: type, source: Path, folder: Path, cfg: dict[str, Any],
                   base_dir: str | None = None):
    """Check the adapter folder ``source`` against the section's base and write it into
    ``folder`` as a saved Bi-LoRA model; returns the detector over the meta-device base (for
    its description and parameter counts: ``load_detector(folder)`` runs it)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from bilora.kinds.bilora import base_of
    from bilora.kinds.bilora.detector import base_model_path, name_base

    source = Path(source)
    base_path = base_model_path(cfg, base_dir)
    lora_conf, dropped = read_lora_config(source)
    config_path = source / CONFIG_FILE
    adapter_base = lora_conf.base_model_name_or_path
    lora_conf.inference_mode = False  # LoRA counted as trainable, as in a trained cell
    model = meta_peft_model(cfg, base_path, lora_conf, config_path)
    state, weights_path = read_adapter_weights(source)
    tensors = check_state(state, get_peft_model_state_dict(model), weights_path)
    check_section(lora_conf, cfg, config_path)
    processor = base_of(cfg).load_processor(base_path)

    # the section's base wins over the one the adapter names (both recorded)
    lora_conf.base_model_name_or_path = base_path
    lora_conf.inference_mode = True
    lora_conf.save_pretrained(folder)
    save_file(tensors, folder / WEIGHT_FILES[0], metadata={"format": "pt"})
    processor.save_pretrained(folder)
    name_base(folder, base_path)

    det = cls(cfg, model, processor, base_path)
    det.imported_from = f"; adapter imported from {source}, trained on {adapter_base}"
    det.import_notes = {"adapter_base": str(adapter_base), "base": base_path,
                        "adapter_weights_file": weights_path.name,
                        "dropped_config_keys": json.dumps(dropped)}
    log.info("adapter %s (trained on %s) imported over %s: %d tensors", source, adapter_base,
             base_path, len(tensors))
    return det
