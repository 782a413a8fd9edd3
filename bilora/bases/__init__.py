"""Captioning VLM bases for Bi-LoRA (the protocol: :mod:`bilora.api.bases`).

One module or folder per base, registered here by its checkpoint's ``model_type``.
"""

BASES = {
    "blip-2": "bilora.bases.blip2:BLIP2",
    "vision-encoder-decoder": "bilora.bases.vit_gpt2:ViTGPT2",
}
