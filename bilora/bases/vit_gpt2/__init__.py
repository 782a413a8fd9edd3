"""ViT-GPT2 (``VisionEncoderDecoderModel``): the captioner the paper names as an alternative
to BLIP-2 (``nlpconnect/vit-gpt2-image-captioning``).

The image path: pixels -> ViT (``encoder``) -> the GPT-2 decoder, which cross-attends to the
encoder's tokens in every layer (through ``enc_to_dec_proj`` when the widths differ). The
prompt is the decoder start token alone (GPT-2's ``<|endoftext|>``); the caption word
follows it, so the answer is predicted at position 0. The language model is the
``decoder``: GPT-2 fuses its attention projections (``c_attn``; the cross-attention adds
``q_attn``), and transformers 5's ViT names its attention ``q_proj``/``k_proj``, so the
paper's targets would adapt the vision tower only (``lora.target_modules`` is refused).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bilora.api.base_tools import load_frozen, processed_pixels, section_config, torch_dtype
from bilora.api.bases import Section, VLMBase
from bilora.errors import ArtifactError

HERE = Path(__file__).resolve().parent
ARCH = HERE / "arch" / "vit-gpt2-image-captioning.json"


class ImageTextProcessor:
    """An image processor and a tokenizer saved to and loaded from one folder (a
    vision-encoder-decoder checkpoint ships the two, without a processor class)."""

    def __init__(self, image_processor: Any, tokenizer: Any):
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        self.image_processor.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ImageTextProcessor:
        from transformers import AutoImageProcessor, AutoTokenizer

        return cls(AutoImageProcessor.from_pretrained(folder),
                   AutoTokenizer.from_pretrained(folder))


class ViTGPT2(VLMBase):
    """A ViT encoder and a GPT-2 decoder with cross-attention."""

    model_type = "vision-encoder-decoder"
    display = "ViT-GPT2"
    stages = ("pixels", "vision")
    parts = {"encoder": "vision"}
    language_model = "decoder"
    default_targets = ("c_attn",)
    shipped = {"nlpconnect/vit-gpt2-image-captioning": ARCH}
    tiny_schema = HERE / "tiny.schema.yaml"
    tiny_example = {"vision_width": 16, "text_width": 16, "vision_layers": 1, "text_layers": 1,
                    "heads": 2, "image_size": 32, "patch_size": 8,
                    "init_std": {"vision": 0.02, "other": 0.2}}
    artifact = "vit-gpt2"

    def __init__(self, model: Any, processor: Any, section: Section, path: str):
        super().__init__(model, processor, section, path)
        self.start = self.inner().config.decoder_start_token_id
        if self.start is None:
            raise ValueError(f"the config of {path} has no decoder_start_token_id")

    # -- torch-free, at DAG build ---------------------------------------------------------
    @classmethod
    def cost(cls, base: Section) -> tuple[float, float, int]:
        if base["source"] == "tiny":
            t = base["tiny"]
            d = {"vision": (t["vision_width"], 2 * t["vision_width"], t["vision_layers"]),
                 "text": (t["text_width"], 4 * t["text_width"], t["text_layers"]),
                 "vocab": 8, "image": t["image_size"], "patch": t["patch_size"]}
        else:
            d = _arch_dims(base.get("name_or_path", ""))
        return _size(d)

    @classmethod
    def build_tiny(cls, tiny: Section, out_dir: str | os.PathLike, seed: int) -> Path:
        from bilora.bases.vit_gpt2.tiny import build_tiny_vit_gpt2

        return build_tiny_vit_gpt2(tiny, out_dir, seed)

    @classmethod
    def checkpoint_files(cls, folder: Path) -> list[Path]:
        from transformers import VisionEncoderDecoderConfig

        if not (folder / "config.json").is_file():
            raise ArtifactError(f"{folder}: no config.json")
        VisionEncoderDecoderConfig.from_pretrained(folder)  # parses: loadable
        weights = [folder / n for n in ("model.safetensors", "pytorch_model.bin")]
        if not any(w.is_file() for w in weights):
            raise ArtifactError(f"{folder}: no model.safetensors or pytorch_model.bin")
        if not (folder / "preprocessor_config.json").is_file():
            raise ArtifactError(f"{folder}: no preprocessor_config.json (the image processor)")
        if not any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json")):
            raise ArtifactError(f"{folder}: no tokenizer.json or vocab.json (the tokenizer)")
        return [folder / "config.json", *(w for w in weights if w.is_file())]

    # -- models ---------------------------------------------------------------------------
    @classmethod
    def meta_config(cls, base: Section):
        from transformers import VisionEncoderDecoderConfig

        from bilora.bases.vit_gpt2.tiny import tiny_config

        return section_config(VisionEncoderDecoderConfig, base, cls.shipped, tiny_config)

    @classmethod
    def model_class(cls) -> type:
        from transformers import VisionEncoderDecoderModel

        return VisionEncoderDecoderModel

    @classmethod
    def load_model(cls, path: str, section: Section):
        return load_frozen(cls.model_class(), path, section)

    @classmethod
    def load_processor(cls, path: str | Path):
        return ImageTextProcessor.from_pretrained(path)

    # -- one loaded model -------------------------------------------------------------------
    def tokenizer(self):
        return self.processor.tokenizer

    def frozen_modules(self, extra_trainable: list[str]) -> list[Any]:
        return [] if "encoder" in extra_trainable else [self.inner().encoder]

    def _from_pixel_values(self, pixel_values):
        return self.inner().encoder(pixel_values=pixel_values).last_hidden_state

    def features(self, images, stage: str):
        pv = self.processor.image_processor(images=images, return_tensors="pt").pixel_values
        return self._from_pixel_values(pv.to(self.device, torch_dtype(self.section["dtype"])))

    def pixel_features(self, pixels, stage: str):
        """``features`` of float images in [0, 1], differentiable in ``pixels``."""
        x = processed_pixels(self.processor.image_processor, pixels, self.input_size,
                             self.device)
        return self._from_pixel_values(x.to(torch_dtype(self.section["dtype"])))

    def continue_features(self, stage: str, x, until: str = "vision"):
        return x  # one stage: the decoder reads the encoder's tokens

    def _start(self, n: int):
        import torch

        return torch.full((n, 1), self.start, dtype=torch.long, device=self.device)

    def answer_logits(self, x, words=None):
        """Decoder logits at the start token, cross-attending to the encoder tokens ``x``
        (with ``words`` the sequence goes on with them)."""
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        ids = self._start(x.shape[0])
        if words is not None:
            ids = torch.cat([ids, words[:, None]], 1)
        out = self.model(encoder_outputs=BaseModelOutput(last_hidden_state=x),
                         decoder_input_ids=ids, decoder_attention_mask=torch.ones_like(ids))
        return out.logits[:, 0]

    def generate_token(self, images):
        """Greedy ``generate`` of one token after the start token."""
        import torch
        from transformers import GenerationConfig

        tok = self.processor.tokenizer
        greedy = GenerationConfig(max_new_tokens=1, do_sample=False, num_beams=1,
                                  decoder_start_token_id=self.start,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
        pv = self.processor.image_processor(images=images, return_tensors="pt").pixel_values
        out = self.model.generate(pixel_values=pv.to(self.device,
                                                     torch_dtype(self.section["dtype"])),
                                  decoder_input_ids=self._start(images.shape[0]),
                                  decoder_attention_mask=torch.ones(
                                      images.shape[0], 1, dtype=torch.long, device=self.device),
                                  generation_config=greedy)
        return out[:, -1]


# -- sizes (torch-free) -------------------------------------------------------------------

def _arch_dims(name: str) -> dict[str, Any]:
    local = Path(name) / "config.json"
    arch = json.loads((local if local.is_file() else ARCH).read_text())
    v, t = arch["encoder"], arch["decoder"]
    width = t.get("n_embd", 768)
    return {"vision": (v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]),
            "text": (width, t.get("n_inner") or 4 * width, t.get("n_layer", 12)),
            "vocab": t.get("vocab_size", 50257), "image": v["image_size"],
            "patch": v["patch_size"]}


def _size(d: dict[str, Any]) -> tuple[float, float, int]:
    """(forward FLOPs per image, parameters, side): the ViT over its tokens, the decoder at
    the start token with cross-attention (its keys and values over every image token)."""
    def layer(width: int, ffn: int) -> int:
        return 4 * width * width + 2 * width * ffn

    vision_tokens = (d["image"] // d["patch"]) ** 2 + 1
    (wv, fv, nv), (wt, ft, nt) = d["vision"], d["text"]
    pv = layer(wv, fv) * nv
    pt = (layer(wt, ft) + 4 * wt * wt) * nt  # + the cross-attention's four projections
    head = d["vocab"] * wt
    flops = 2 * (pv * vision_tokens + pt + 2 * wt * wt * nt * vision_tokens + head)
    return flops, pv + pt + head, d["image"]
