"""Build a tiny BLIP-2 base model (random weights) with its tokenizer and image processor.

This stands in for ``Salesforce/blip2-opt-2.7b`` on machines without the network:
the real ``Blip2ForConditionalGeneration`` class with a small config, a word-level
tokenizer and a ``BlipImageProcessor`` made locally, all written with
``save_pretrained`` so that training loads them through ``from_pretrained``, the
path the paper config takes with the real checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bilora.api.base_tools import init_normal_, word_tokenizer
from bilora.atomic import atomic_path

# Word-level vocabulary: OPT's conventions for special tokens, then the caption words.
VOCAB = ["<pad>", "</s>", "<unk>", "<image>", "real", "fake", "a", "photo", "image", "of"]
PAD, BOS, UNK, IMAGE = 0, 1, 2, 3


def tiny_config(cfg: dict[str, Any]):
    """A ``Blip2Config`` from the ``tiny_base`` section of the Bi-LoRA config."""
    from transformers import Blip2Config

    d_v, d_q, d_t = cfg["vision_width"], cfg["qformer_width"], cfg["text_width"]
    return Blip2Config(
        vision_config=dict(
            hidden_size=d_v, intermediate_size=2 * d_v, num_hidden_layers=cfg["vision_layers"],
            num_attention_heads=cfg["heads"], image_size=cfg["image_size"],
            patch_size=cfg["patch_size"], attention_dropout=0.0,
        ),
        qformer_config=dict(
            hidden_size=d_q, intermediate_size=2 * d_q, num_hidden_layers=cfg["qformer_layers"],
            num_attention_heads=cfg["heads"], encoder_hidden_size=d_v,
            cross_attention_frequency=1, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        text_config=dict(
            model_type="opt", vocab_size=len(VOCAB), hidden_size=d_t, word_embed_proj_dim=d_t,
            ffn_dim=2 * d_t, num_hidden_layers=cfg["text_layers"],
            num_attention_heads=cfg["heads"], max_position_embeddings=cfg["num_query_tokens"] + 8,
            pad_token_id=PAD, bos_token_id=BOS, eos_token_id=BOS, dropout=0.0,
            attention_dropout=0.0,
        ),
        num_query_tokens=cfg["num_query_tokens"],
        image_token_index=IMAGE,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=BOS,
    )


def build_tiny_blip2(cfg: dict[str, Any], out_dir: str | os.PathLike, seed: int) -> Path:
    """Build a tiny BLIP-2 (``make_tiny_blip2``) and save it with its processor to ``out_dir``."""
    model, processor = make_tiny_blip2(cfg, seed)
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out


def make_tiny_blip2(cfg: dict[str, Any], seed: int):
    """A tiny BLIP-2 with random weights, and its ``Blip2Processor``, in memory.

    Initialisation follows what was measured to learn on procedural data with a random
    base: vision tower std ``init_std.vision``, Q-Former, projection, OPT and query
    tokens std ``init_std.other`` (BLIP-2's own defaults leave the vision tower and the
    query tokens near zero, and then nothing learns).
    """
    import torch
    from transformers import (
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )

    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(tiny_config(cfg))
    std_v, std_o = cfg["init_std"]["vision"], cfg["init_std"]["other"]
    init_normal_(model.vision_model, std_v)
    with torch.no_grad():
        model.vision_model.embeddings.class_embedding.normal_(0, std_v)
        model.vision_model.embeddings.position_embedding.normal_(0, std_v)
        model.query_tokens.normal_(0, std_o)
    for part in (model.qformer, model.language_projection, model.language_model):
        init_normal_(part, std_o)

    tokenizer = word_tokenizer(VOCAB, bos="</s>", pad="<pad>")
    size = cfg["image_size"]
    image_processor = BlipImageProcessor(
        size={"height": size, "width": size}, do_resize=True, do_rescale=True,
        do_normalize=True, do_convert_rgb=True,
    )
    processor = Blip2Processor(image_processor, tokenizer,
                               num_query_tokens=cfg["num_query_tokens"])
    return model, processor
