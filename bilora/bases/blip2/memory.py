"""An estimate of the peak GPU memory of Bi-LoRA training on BLIP-2 with an OPT-style decoder
(``bilora describe``), from the architecture alone (the model on the meta device)."""

from __future__ import annotations

from typing import Any


def blip2_config(det_cfg: dict[str, Any]):
    """The ``Blip2Config`` a Bi-LoRA section would load, without downloading it."""
    from bilora.bases.blip2 import BLIP2

    return BLIP2.meta_config(det_cfg["base_model"])


GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: CUDA context, cuBLAS/cuDNN workspaces and allocator slack: an assumption, not derived.
CUDA_OVERHEAD = 1.0 * GIB


def decoder_bytes_per_token(text_config, lora_in: list[int], r: int, lora_dropout: float,
                            s: int, seq: int) -> float:
    """Bytes one decoder layer keeps for the LoRA-only backward, per token: ``lora_in`` the
    input widths of its LoRA modules, ``s`` the bytes of the dtype, ``seq`` the sequence
    length (the formula: :func:`training_memory`)."""
    d, f, h = text_config.hidden_size, text_config.ffn_dim, text_config.num_attention_heads
    per = s * (6 * d + f) + s * h * seq + (2 * d if text_config.dropout > 0 else 0)
    return float(per + sum(4 * (d_in + r) + (d_in if lora_dropout > 0 else 0)
                           for d_in in lora_in))


def training_memory(det_cfg: dict[str, Any], model=None, batch_size: int | None = None
                    ) -> dict[str, float] | None:
    """Estimated peak GPU bytes of Bi-LoRA training by part, at the config's batch size and
    dtype (None when the language model is not an OPT-style decoder).

    With B the batch, T = num_query_tokens + 2 the training sequence ([<image>]*NQ, BOS,
    the caption word), L decoder layers of width d, h heads, feed-forward width f, s the
    bytes of the dtype, V the vocabulary:

    - frozen weights: s per parameter; the Q-Former and query tokens 4 (transformers keeps
      them float32 in a half-precision model);
    - LoRA: 16 bytes per trainable parameter (float32 weight, gradient, Adam's two moments;
      PEFT keeps adapters float32 over a half-precision base);
    - decoder activations kept for the backward, B * T * L * per token and layer
      (:func:`decoder_bytes_per_token`):
      s * (6d + f) (the two layer-norm inputs, q, k, v, the attention output, the ReLU
      output; frozen linears keep nothing, their input gradients need only the weights)
      + s * h * T (attention probabilities, an upper bound: fused kernels keep less)
      + per LoRA module 4 * (d_in + r) (its float32 input and the rank-r hidden, for the
      LoRA gradients) + d_in (the LoRA dropout mask, bool) + 2d (the two residual dropout
      masks, bool, when the decoder's dropout is on: CUDA's fused dropout keeps bool masks,
      the CPU keeps them in the tensor's dtype); the LoRA-only backward still needs the
      input gradients through every decoder layer above the first LoRA module. Checked
      against autograd's saved tensors of a decoder layer on CPU at the real widths in
      bfloat16: 102,640 bytes per token, 82,160 with the masks as bool; this formula
      gives 84,224 (it counts attention probabilities where the kernel kept 128 bytes);
    - head: the final layer norm's input B*T*d*s and the logits at the one position read,
      B * V * (2s + 12) (the logits, their float32 copy and log-softmax, the gradients);
    - the image path (vision tower, Q-Former) keeps nothing for the backward when nothing
      in it trains, cached or not: uncached training adds only the working set of one
      vision layer, B * N * (5 d_v + f_v) * s (N image tokens), and the pixels.
    """
    from peft.tuners.lora import LoraLayer

    conf = blip2_config(det_cfg)
    tc, vc = conf.text_config, conf.vision_config
    if getattr(tc, "ffn_dim", None) is None:
        return None
    if model is None:
        from bilora.kinds.bilora.describe import meta_bilora

        model = meta_bilora(det_cfg)
    s = DTYPE_BYTES[det_cfg["dtype"]]
    batch = batch_size or det_cfg["train"]["batch_size"]
    weights = {"vision": 0, "qformer": 0, "language": 0}
    trainable = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            trainable += p.numel()
            continue
        part = ("vision" if ".vision_model." in f".{name}" else
                "qformer" if ".qformer." in f".{name}" or name.endswith("query_tokens")
                else "language")
        weights[part] += p.numel() * (4 if part == "qformer" else s)
    d, n_layers = tc.hidden_size, tc.num_hidden_layers
    seq = conf.num_query_tokens + 2
    lora = det_cfg["lora"]
    lora_in = [m.get_base_layer().in_features for name, m in
               model.get_base_model().language_model.named_modules()
               if isinstance(m, LoraLayer) and ".layers.0." in f".{name}."]
    per_token = decoder_bytes_per_token(tc, lora_in, lora["r"], lora["dropout"], s, seq)
    tokens = batch * seq
    n_image = (vc.image_size // vc.patch_size) ** 2 + 1
    out = {"weights": float(sum(weights.values())),
           "weights_vision": float(weights["vision"]),
           "weights_qformer": float(weights["qformer"]),
           "weights_language": float(weights["language"]),
           "lora": 16.0 * trainable,
           "activations": float(tokens * n_layers * per_token),
           "activations_per_token_layer": float(per_token),
           "head": float(tokens * d * s + batch * tc.vocab_size * (2 * s + 12)),
           "image_working_set": float(batch * n_image * (5 * vc.hidden_size
                                                         + vc.intermediate_size) * s
                                      + batch * 3 * vc.image_size ** 2 * s),
           "overhead": CUDA_OVERHEAD, "batch": float(batch), "sequence": float(seq)}
    out["cached"] = (out["weights"] + out["lora"] + out["activations"] + out["head"]
                     + out["overhead"])
    out["uncached"] = out["cached"] + out["image_working_set"]
    return out


def memory_lines(det_cfg: dict[str, Any], model=None) -> list[str]:
    """The printed peak-memory estimate of training (:func:`training_memory`)."""
    if "train" not in det_cfg:
        return ["peak GPU memory of training: none (the weights are imported, not trained)"]
    mem = training_memory(det_cfg, model)
    if mem is None:
        return ["peak GPU memory of training: no estimate (the language model is not an "
                "OPT-style decoder)"]
    conf = blip2_config(det_cfg)

    def gib(x: float) -> str:
        return f"{x / GIB:6.2f} GiB"
    layers = conf.text_config.num_hidden_layers
    qformer = "Q-Former" + (" float32" if det_cfg["dtype"] != "float32" else "")
    lines = [
        f"peak GPU memory of training, estimated (batch {int(mem['batch'])}, "
        f"{det_cfg['dtype']}; formula: bilora/bases/blip2/memory.py training_memory):",
        f"  frozen weights                          {gib(mem['weights'])} (vision tower "
        f"{mem['weights_vision'] / GIB:.2f}, {qformer} {mem['weights_qformer'] / GIB:.2f}, "
        f"language model {mem['weights_language'] / GIB:.2f})",
        f"  LoRA weights, gradients, Adam (float32) {gib(mem['lora'])}",
        f"  decoder activations kept for backward   {gib(mem['activations'])} ({layers} layers "
        f"x {int(mem['sequence'])} tokens x batch {int(mem['batch'])} x "
        f"{mem['activations_per_token_layer'] / 1024:.1f} KiB)",
        f"  final norm input, logits at 1 position  {gib(mem['head'])}",
        f"  CUDA context, workspaces (assumed)      {gib(mem['overhead'])}",
        f"  total, training from cached features    {gib(mem['cached'])}",
        f"  total, uncached                         {gib(mem['uncached'])} (the frozen image "
        "path keeps nothing for the backward: + one vision layer's working set)"]
    if det_cfg["extra_trainable"]:
        lines.append("  not counted: the activations of " + ", ".join(det_cfg["extra_trainable"])
                     + " (trained here)")
    else:
        image = (mem["weights_vision"] + mem["weights_qformer"]) / GIB
        lines.append(f"  with cached features the image path's weights ({image:.2f} GiB) need "
                     "not be on the GPU (the harness moves the whole model there)")
    return lines
