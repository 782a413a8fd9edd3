"""What several VLM bases share: the frozen model's loading and the image processor's steps
as torch ops (the differentiable image path of white-box attacks)."""

from __future__ import annotations

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
