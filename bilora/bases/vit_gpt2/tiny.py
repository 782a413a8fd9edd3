"""Build a tiny ViT-GPT2 (random weights) with its tokenizer and image processor.

It stands in for ``nlpconnect/vit-gpt2-image-captioning`` offline: the real
``VisionEncoderDecoderModel`` (a ``ViTModel`` encoder, a ``GPT2LMHeadModel`` decoder with
cross-attention) from small configs, a word-level tokenizer with GPT-2's conventions (one
``<|endoftext|>`` token for BOS, EOS and padding) and a ``ViTImageProcessor``, saved with
``save_pretrained`` and loaded through ``from_pretrained`` as a real checkpoint is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bilora.api.base_tools import init_normal_, word_tokenizer
from bilora.atomic import atomic_path

VOCAB = ["<|endoftext|>", "<unk>", "real", "fake", "a", "photo", "image", "of"]
BOS = 0  # GPT-2's <|endoftext|>: BOS, EOS, padding and the decoder's start token


def tiny_config(cfg: dict[str, Any]):
    """A ``VisionEncoderDecoderConfig`` from a ``base_model.tiny`` section."""
    from transformers import GPT2Config, VisionEncoderDecoderConfig, ViTConfig

    d_v, d_t = cfg["vision_width"], cfg["text_width"]
    encoder = ViTConfig(hidden_size=d_v, intermediate_size=2 * d_v,
                        num_hidden_layers=cfg["vision_layers"],
                        num_attention_heads=cfg["heads"], image_size=cfg["image_size"],
                        patch_size=cfg["patch_size"], hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    decoder = GPT2Config(vocab_size=len(VOCAB), n_embd=d_t, n_layer=cfg["text_layers"],
                         n_head=cfg["heads"], n_positions=16, add_cross_attention=True,
                         is_decoder=True, bos_token_id=BOS, eos_token_id=BOS, pad_token_id=BOS,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    conf = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    conf.decoder_start_token_id = conf.pad_token_id = conf.bos_token_id = BOS
    conf.eos_token_id = BOS
    return conf


def make_tiny_vit_gpt2(cfg: dict[str, Any], seed: int):
    """The tiny model (ViT std ``init_std.vision``, GPT-2 std ``init_std.other``) and its
    processor, in memory."""
    import torch
    from transformers import VisionEncoderDecoderModel, ViTImageProcessor

    from bilora.bases.vit_gpt2 import ImageTextProcessor

    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(tiny_config(cfg))
    init_normal_(model.encoder, cfg["init_std"]["vision"])
    with torch.no_grad():
        model.encoder.embeddings.cls_token.normal_(0, cfg["init_std"]["vision"])
        model.encoder.embeddings.position_embeddings.normal_(0, cfg["init_std"]["vision"])
    init_normal_(model.decoder, cfg["init_std"]["other"])
    if hasattr(model, "enc_to_dec_proj"):
        init_normal_(model.enc_to_dec_proj, cfg["init_std"]["other"])
    tokenizer = word_tokenizer(VOCAB, bos="<|endoftext|>", pad="<|endoftext|>")
    size = cfg["image_size"]
    image_processor = ViTImageProcessor(size={"height": size, "width": size}, do_resize=True,
                                        do_rescale=True, do_normalize=True,
                                        image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return model, ImageTextProcessor(image_processor, tokenizer)


def build_tiny_vit_gpt2(cfg: dict[str, Any], out_dir: str | os.PathLike, seed: int) -> Path:
    """Build the tiny ViT-GPT2 and save it with its processor to ``out_dir``."""
    model, processor = make_tiny_vit_gpt2(cfg, seed)
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out
