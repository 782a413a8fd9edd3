"""BLIP-2 (``Blip2ForConditionalGeneration``): the paper's base for Bi-LoRA.

The image path: pixels -> ViT (``vision_model``) -> Q-Former (``qformer`` with the learned
``query_tokens``) -> ``language_projection`` -> the language model (OPT in the paper). The
prompt is ``[<image>] * num_query_tokens + [BOS]`` (transformers 5 reads the image tokens
from ``input_ids``); the caption word follows BOS, so the answer is predicted at BOS.
Torch and transformers are imported inside the methods: the class-level facts (stages,
parts, cost, shipped architectures) are read when the DAG is built.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from bilora.api.base_tools import load_frozen, processed_pixels, section_config, torch_dtype
from bilora.api.bases import Section, VLMBase
from bilora.errors import ArtifactError

HERE = Path(__file__).resolve().parent
OPT_2_7B = HERE / "arch" / "blip2-opt-2.7b.json"


class BLIP2(VLMBase):
    """BLIP-2 with a decoder-only language model (OPT)."""

    model_type = "blip-2"
    display = "BLIP-2"
    stages = ("pixels", "vision", "qformer", "projected")
    parts = {"vision_model": "vision", "qformer": "qformer", "query_tokens": "qformer",
             "language_projection": "projected"}
    shipped = {"Salesforce/blip2-opt-2.7b": OPT_2_7B,
               "ybelkada/blip2-opt-2.7b-fp16-sharded": OPT_2_7B}
    tiny_schema = HERE / "tiny.schema.yaml"
    tiny_example = {"vision_width": 16, "qformer_width": 16, "text_width": 16,
                    "vision_layers": 1, "qformer_layers": 1, "text_layers": 1, "heads": 2,
                    "image_size": 32, "patch_size": 8, "num_query_tokens": 4,
                    "init_std": {"vision": 0.02, "other": 0.2}}
    artifact = "blip2"

    def __init__(self, model: Any, processor: Any, section: Section, path: str):
        import torch

        super().__init__(model, processor, section, path)
        conf = self.inner().config
        tok = processor.tokenizer
        if conf.image_token_index is None:
            conf.image_token_index = tok.convert_tokens_to_ids(processor.image_token.content)
        if tok.bos_token_id is None:
            raise ValueError(f"the tokenizer of {path} has no BOS token")
        self.prompt_ids = torch.tensor([conf.image_token_index] * conf.num_query_tokens
                                       + [tok.bos_token_id])

    # -- torch-free, at DAG build ---------------------------------------------------------
    @classmethod
    def cost(cls, base: Section) -> tuple[float, float, int]:
        return _blip2_size(_dims(base))

    @classmethod
    def build_tiny(cls, tiny: Section, out_dir: str | os.PathLike, seed: int) -> Path:
        from bilora.bases.blip2.tiny import build_tiny_blip2

        return build_tiny_blip2(tiny, out_dir, seed)

    @classmethod
    def checkpoint_files(cls, folder: Path) -> list[Path]:
        from transformers import Blip2Config

        if not (folder / "config.json").is_file():
            raise ArtifactError(f"{folder}: no config.json")
        Blip2Config.from_pretrained(folder)  # parses: the checkpoint is loadable
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            weights = [folder / s for s in shards]
        else:
            weights = [folder / "model.safetensors"]
        missing = [w.name for w in weights if not w.is_file()]
        if missing:
            raise ArtifactError(f"{folder}: weight files missing: {', '.join(missing[:5])}")
        processor = [folder / n for n in ("preprocessor_config.json", "processor_config.json")]
        if not any(p.is_file() for p in processor):
            raise ArtifactError(f"{folder}: no preprocessor_config.json (the image processor)")
        return [folder / "config.json", *weights]

    # -- models ---------------------------------------------------------------------------
    @classmethod
    def meta_config(cls, base: Section):
        from transformers import Blip2Config

        from bilora.bases.blip2.tiny import tiny_config

        return section_config(Blip2Config, base, cls.shipped, tiny_config)

    @classmethod
    def model_class(cls) -> type:
        from transformers import Blip2ForConditionalGeneration

        return Blip2ForConditionalGeneration

    @classmethod
    def load_model(cls, path: str, section: Section):
        """The frozen BLIP-2: its dtype, attention kernel and, on CUDA only, optional 8-bit
        weights (bitsandbytes, the authors' loading)."""
        return load_frozen(cls.model_class(), path, section)

    @classmethod
    def load_processor(cls, path: str | Path):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)

    @classmethod
    def memory_lines(cls, section: Section, model: Any) -> list[str]:
        from bilora.bases.blip2.memory import memory_lines

        return memory_lines(section, model)

    # -- one loaded model -------------------------------------------------------------------
    def tokenizer(self):
        return self.processor.tokenizer

    def frozen_modules(self, extra_trainable: list[str]) -> list[Any]:
        base = self.inner()
        return [getattr(base, n) for n in ("vision_model", "qformer")
                if n not in extra_trainable]

    def pixel_values(self, images):
        pv = self.processor.image_processor(images=images, return_tensors="pt").pixel_values
        return pv.to(self.device, torch_dtype(self.section["dtype"]))

    def features(self, images, stage: str):
        return self._from_pixel_values(self.pixel_values(images), stage)

    def _from_pixel_values(self, pixel_values, stage: str):
        x = self.inner().vision_model(pixel_values=pixel_values).last_hidden_state
        return self.continue_features("vision", x, stage)

    def pixel_features(self, pixels, stage: str):
        """``features`` of float images in [0, 1], differentiable in ``pixels``: the image
        processor's steps as torch ops (its bicubic antialiased resize; at its size the
        resize leaves an image as it is: ``tests/test_pixel_margin.py``)."""
        x = processed_pixels(self.processor.image_processor, pixels, self.input_size,
                             self.device)
        return self._from_pixel_values(x.to(torch_dtype(self.section["dtype"])), stage)

    def continue_features(self, stage: str, x, until: str = "projected"):
        import torch

        base = self.inner()
        order = self.stages.index
        if order(stage) < order("qformer") <= order(until):
            mask = torch.ones(x.shape[:-1], dtype=torch.long, device=x.device)
            q = base.qformer(query_embeds=base.query_tokens.expand(x.shape[0], -1, -1),
                             encoder_hidden_states=x, encoder_attention_mask=mask,
                             return_dict=True).last_hidden_state
            x = q.to(x.dtype) if q.dtype != x.dtype else q  # the Q-Former runs in float32
            stage = "qformer"
        if order(stage) < order("projected") <= order(until):
            x = base.language_projection(x)
        return x

    def _prompt(self, n: int):
        return self.prompt_ids.to(self.device).unsqueeze(0).expand(n, -1)

    def answer_logits(self, x, words=None):
        """Decoder logits at BOS of ``[<image>]*NQ + [BOS]`` (the head at that one position;
        with ``words`` the sequence goes on with them, so LoRA dropout masks cover them)."""
        import torch
        from transformers.models.blip_2.modeling_blip_2 import (
            BaseModelOutputWithVisionQformerOutputs,
        )

        ids = self._prompt(x.shape[0])
        if words is not None:
            ids = torch.cat([ids, words[:, None]], 1)
        keep = torch.tensor([self.prompt_ids.numel() - 1], device=self.device)
        out = self.model(pixel_values=None, input_ids=ids, attention_mask=torch.ones_like(ids),
                         mm_encoder_outputs={"image": BaseModelOutputWithVisionQformerOutputs(
                             pooler_output=x)}, logits_to_keep=keep)
        return out.logits[:, -1]

    def generate_token(self, images):
        """Greedy ``generate`` of one token after the prompt, as the authors read it."""
        import torch
        from transformers import GenerationConfig

        ids = self._prompt(images.shape[0])
        tok = self.processor.tokenizer
        # plain greedy decoding: no processors or penalties a checkpoint's config may carry
        greedy = GenerationConfig(max_new_tokens=1, do_sample=False, num_beams=1,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
        out = self.model.generate(pixel_values=self.pixel_values(images), input_ids=ids,
                                  attention_mask=torch.ones_like(ids), generation_config=greedy)
        return out[:, -1]


# -- sizes (torch-free) -------------------------------------------------------------------

def _dims(base: Section) -> dict[str, Any]:
    if base["source"] == "tiny":
        t = base["tiny"]
        return {"vision": (t["vision_width"], 2 * t["vision_width"], t["vision_layers"]),
                "qformer": (t["qformer_width"], 2 * t["qformer_width"], t["qformer_layers"]),
                "text": (t["text_width"], 2 * t["text_width"], t["text_layers"]),
                "vocab": 64, "image": t["image_size"], "patch": t["patch_size"],
                "queries": t["num_query_tokens"]}
    return _arch_dims(base.get("name_or_path", ""))


@cache
def _arch_dims(name: str) -> dict[str, Any]:
    """Widths of a pretrained BLIP-2: its local config.json, the shipped one, else opt-2.7b's."""
    local = Path(name) / "config.json"
    path = local if local.is_file() else BLIP2.shipped.get(name, OPT_2_7B)
    arch = json.loads(path.read_text())
    v, q, t = arch["vision_config"], arch["qformer_config"], arch["text_config"]
    return {"vision": (v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]),
            "qformer": (q["hidden_size"], q["intermediate_size"], q["num_hidden_layers"]),
            "text": (t["hidden_size"], t["ffn_dim"], t["num_hidden_layers"]),
            "vocab": t["vocab_size"], "image": v["image_size"], "patch": v["patch_size"],
            "queries": arch.get("num_query_tokens", 32)}


def _blip2_size(d: dict[str, Any]) -> tuple[float, float, int]:
    def layer(width: int, ffn: int) -> int:
        return 4 * width * width + 2 * width * ffn

    vision_tokens = (d["image"] // d["patch"]) ** 2 + 1
    text_tokens = d["queries"] + 2
    pv, pq, pt = (layer(w, f) * n for w, f, n in (d["vision"], d["qformer"], d["text"]))
    head = d["vocab"] * d["text"][0]
    flops = 2 * (pv * vision_tokens + pq * d["queries"] + pt * text_tokens + head * text_tokens)
    return flops, pv + pq + pt + head, d["image"]
