"""What several VLM bases share: the architecture of a ``base_model`` section, the frozen
model's loading, the image processor's steps as torch ops (the differentiable image path of
white-box attacks), and the tiny stand-ins' initialisation and word-level tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bilora.errors import ConfigError

#: PIL's resampling filters by number, as torch's interpolation modes
_MODES = {2: "bilinear", 3: "bicubic"}


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def load_frozen(model_class: type, path: str, section: dict[str, Any]):
    """``model_class.from_pretrained(path)`` as the section says: its dtype, attention kernel
    and, on CUDA only, optional 8-bit weights (bitsandbytes, the authors' loading)."""
    import torch

    kwargs: dict[str, Any] = {"dtype": torch_dtype(section["dtype"]),
                              "attn_implementation": section["attn_implementation"]}
    if section["load_in_8bit"]:
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError:
            raise ConfigError("load_in_8bit needs bitsandbytes: pip install "
                              "'bilora-bench[int8]' (CUDA only)") from None
        if not torch.cuda.is_available():
            raise ConfigError("load_in_8bit needs a CUDA GPU (bitsandbytes); set it to false")
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return model_class.from_pretrained(path, **kwargs)


def processed_pixels(proc: Any, pixels: Any, size: int, device: Any):
    """The image processor ``proc``'s resize (its filter, antialiased), rescale and
    normalisation as torch ops on float NCHW ``pixels`` in [0, 1], in float32 on ``device``:
    differentiable in ``pixels``. At the processor's size the resize leaves an image as it
    is."""
    import torch
    import torch.nn.functional as F

    x = pixels.to(device, torch.float32) * 255.0  # the processor's uint8 scale
    if proc.do_resize and x.shape[-2:] != (size, size):
        mode = _MODES.get(int(proc.resample))
        if mode is None:
            raise NotImplementedError(f"resampling filter {proc.resample} of the image "
                                      "processor has no torch equivalent here")
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False,
                          antialias=True).clamp(0, 255)
    if proc.do_rescale:
        x = x * proc.rescale_factor
    if proc.do_normalize:
        mean = torch.tensor(proc.image_mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(proc.image_std, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


def section_config(config_class: type, base: dict[str, Any], shipped: dict[str, Path],
                   tiny_config: Any):
    """The ``config_class`` a ``base_model`` section loads, without weights: ``tiny_config``
    of its tiny section, a shipped architecture, or a local checkpoint's config.json."""
    if base["source"] == "tiny":
        return tiny_config(base["tiny"])
    name = base["name_or_path"]
    if name in shipped:
        data = json.loads(shipped[name].read_text())
        data.pop("_comment", None)
        return config_class(**data)
    if (Path(name) / "config.json").exists():
        return config_class.from_pretrained(name)
    raise FileNotFoundError(f"no architecture known for base_model.name_or_path {name!r}: "
                            f"shipped: {', '.join(shipped)}; or give a local checkpoint folder")


def init_normal_(module: Any, std: float) -> None:
    """Re-initialise every Linear / Embedding / Conv2d (normal, std ``std``, zero bias) and
    LayerNorm (ones, zeros) below ``module``."""
    import torch.nn as nn

    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def word_tokenizer(vocab: list[str], bos: str, pad: str, unk: str = "<unk>"):
    """A word-level fast tokenizer over ``vocab`` (whitespace split), BOS = EOS = ``bos``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=bos,
                                   pad_token=pad, unk_token=unk)
