"""The Bi-LoRA detector: BLIP-2 fine-tuned with LoRA to caption an image ``real`` or ``fake``.

Training input: ``[<image>] * num_query_tokens + [BOS] + [word]``; the loss is the
language-model cross-entropy on the caption word only (image positions and BOS
carry label -100). ``P(fake)`` comes from one batched forward over the prompt
``[<image>] * num_query_tokens + [BOS]``: the logits of the two caption words at
the last position, softmaxed. The paper's readout, greedy generation of one token,
is the ``generate`` mode.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from bilora.detectors import Detector

#: The image path of BLIP-2, in order: what each stage's output is.
STAGES = ("pixels", "vision", "qformer", "projected")


def lora_config(cfg: dict[str, Any]):
    """The ``peft.LoraConfig`` of a Bi-LoRA config section (every field stated)."""
    from peft import LoraConfig

    lora = cfg["lora"]
    return LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]), bias=lora["bias"],
        modules_to_save=list(cfg["extra_trainable"]) or None,
    )


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def base_model_path(cfg: dict[str, Any], base_dir: str | None) -> str:
    """Where the BLIP-2 base comes from: a built tiny base folder, or a hub id / local path."""
    base = cfg["base_model"]
    if base["source"] == "tiny":
        if not base_dir:
            raise ValueError("Bi-LoRA with base_model.source 'tiny' needs the built base folder "
                             "(bilora build-base) passed as --base")
        return str(base_dir)
    return base["name_or_path"]


def load_base(path: str, cfg: dict[str, Any]):
    """The frozen BLIP-2 base of a Bi-LoRA section: its dtype, attention implementation
    and, on CUDA only, optional 8-bit weights (bitsandbytes, the authors' loading)."""
    from transformers import Blip2ForConditionalGeneration

    from bilora.errors import ConfigError

    kwargs: dict[str, Any] = {"dtype": torch_dtype(cfg["dtype"]),
                              "attn_implementation": cfg["attn_implementation"]}
    if cfg["load_in_8bit"]:
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
    return Blip2ForConditionalGeneration.from_pretrained(path, **kwargs)


def saved_base(folder: str | os.PathLike) -> str:
    """The base a saved adapter folder names: a folder (relative to the adapter folder) or a
    hub id."""
    name = json.loads((Path(folder) / "adapter_config.json").read_text())[
        "base_model_name_or_path"]
    local = Path(folder) / name
    return str(local.resolve()) if not Path(name).is_absolute() and local.is_dir() else name


def name_base(folder: Path, base_path: str) -> None:
    """Name the base in a saved adapter's config: a base folder relative to the model folder
    (the saved model moves with the results tree, whatever the working directory); a hub id
    stays as it is."""
    conf_path = folder / "adapter_config.json"
    conf = json.loads(conf_path.read_text())
    if Path(base_path).is_dir():
        conf["base_model_name_or_path"] = os.path.relpath(Path(base_path).resolve(),
                                                          folder.resolve())
    conf_path.write_text(json.dumps(conf, indent=2, sort_keys=True))


def _processor(path: str | Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


def lora_module_names(model: torch.nn.Module) -> list[str]:
    """Names of every module of ``model`` that carries a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    return [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]


class BiLoRADetector(Detector):
    """BLIP-2 (``Blip2ForConditionalGeneration``) wrapped by PEFT LoRA."""

    kind = "bilora"

    def __init__(self, cfg: dict[str, Any], model, processor, base_path: str):
        super().__init__(cfg)
        self.model = model
        self.processor = processor
        self.base_path = base_path
        tok = processor.tokenizer
        conf = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
        if conf.image_token_index is None:
            conf.image_token_index = tok.convert_tokens_to_ids(processor.image_token.content)
        self.word_ids = []
        for name in ("real", "fake"):
            word = cfg["captions"][name]
            ids = tok(word, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise ValueError(f"caption word {word!r} (captions.{name}) is {len(ids)} tokens "
                                 f"for the tokenizer of {base_path}; it must be exactly one")
            self.word_ids.append(ids[0])
        bos = tok.bos_token_id
        if bos is None:
            raise ValueError(f"the tokenizer of {base_path} has no BOS token")
        prompt = [conf.image_token_index] * conf.num_query_tokens + [bos]
        self.register_buffer("prompt_ids", torch.tensor(prompt), persistent=False)

    @property
    def input_size(self) -> int:
        size = self.processor.image_processor.size
        return int(size.get("height") or size.get("shortest_edge"))

    # -- construction -------------------------------------------------------
    @classmethod
    def build(cls, cfg: dict[str, Any], seed: int, base_dir: str | None = None) -> BiLoRADetector:
        from peft import get_peft_model

        path = base_model_path(cfg, base_dir)
        model = load_base(path, cfg)
        processor = _processor(path)
        torch.manual_seed(seed)
        model = get_peft_model(model, lora_config(cfg))
        return cls(cfg, model, processor, path)

    def save_weights(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        name_base(folder, self.base_path)

    @classmethod
    def import_weights(cls, source: Path, folder: Path, cfg: dict[str, Any],
                       base_dir: str | None = None) -> BiLoRADetector:
        """A released PEFT adapter folder (the authors' PEFT 0.4/0.5 form too), checked and
        written as ``save_weights`` writes (:mod:`bilora.adapter_import`)."""
        from bilora.adapter_import import import_adapter

        return import_adapter(cls, source, folder, cfg, base_dir)

    @classmethod
    def load_weights(cls, folder: Path, cfg: dict[str, Any]) -> BiLoRADetector:
        from peft import PeftModel

        base = saved_base(folder)
        model = load_base(base, cfg)
        model = PeftModel.from_pretrained(model, folder)
        return cls(cfg, model, _processor(folder), base)

    # -- the interface ------------------------------------------------------
    def frozen_submodules(self) -> list[torch.nn.Module]:
        base = self.model.get_base_model()
        extra = set(self.cfg["extra_trainable"])
        return [getattr(base, n) for n in ("vision_model", "qformer") if n not in extra]

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        pv = self.processor.image_processor(images=images, return_tensors="pt").pixel_values
        return pv.to(self.device, torch_dtype(self.cfg["dtype"]))

    def _prompt(self, n: int) -> torch.Tensor:
        return self.prompt_ids.to(self.device).unsqueeze(0).expand(n, -1)

    # -- the image path in stages: pixels -> vision -> qformer -> projected ----
    def frozen_stage(self) -> str | None:
        """The deepest stage of the image path that no training changes (its output can
        be computed once per image), from the parameters that actually train; None when
        the vision tower itself trains."""
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}

        def trains(part: str) -> bool:
            return any(f".{part}." in f".{n}" for n in trainable)
        if trains("vision_model"):
            return None
        if trains("qformer") or any(n.endswith("query_tokens") for n in trainable):
            return "vision"
        if trains("language_projection"):
            return "qformer"
        return "projected"

    def features(self, images: torch.Tensor, stage: str) -> torch.Tensor:
        """The image path's output at ``stage`` (``vision``, ``qformer`` or ``projected``)."""
        base = self.model.get_base_model()
        x = base.vision_model(pixel_values=self.pixel_values(images)).last_hidden_state
        return self.continue_features("vision", x, stage)

    def continue_features(self, stage: str, x: torch.Tensor, until: str = "projected"
                          ) -> torch.Tensor:
        """Carry features from ``stage`` on through the image path to ``until``."""
        base = self.model.get_base_model()
        order = STAGES.index
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

    def last_logits(self, projected: torch.Tensor, words: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Decoder logits, [N, vocab], at the BOS position of ``[<image>]*NQ + [BOS]``, the
        position that predicts the caption word; with ``words`` the sequence goes on with
        them (teacher forcing: the training input, whose LoRA dropout masks cover it too).
        The head runs at that one position only."""
        from transformers.models.blip_2.modeling_blip_2 import (
            BaseModelOutputWithVisionQformerOutputs,
        )

        ids = self._prompt(projected.shape[0])
        if words is not None:
            ids = torch.cat([ids, words[:, None]], 1)
        keep = torch.tensor([self.prompt_ids.numel() - 1], device=self.device)
        out = self.model(pixel_values=None, input_ids=ids, attention_mask=torch.ones_like(ids),
                         mm_encoder_outputs={"image": BaseModelOutputWithVisionQformerOutputs(
                             pooler_output=projected)}, logits_to_keep=keep)
        return out.logits[:, -1]

    def _words(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.word_ids, device=self.device)[labels.to(self.device).long()]

    def loss_from_features(self, x: torch.Tensor, labels: torch.Tensor, stage: str
                           ) -> torch.Tensor:
        """The caption-word loss from features at ``stage`` (a frozen-feature cache)."""
        words = self._words(labels)
        logits = self.last_logits(self.continue_features(stage, x.to(self.device)), words)
        return torch.nn.functional.cross_entropy(logits.float(), words)

    @torch.no_grad()
    def predict_from_features(self, x: torch.Tensor, stage: str
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(fake), the greedy next token) from features at ``stage``."""
        logits = self.last_logits(self.continue_features(stage, x.to(self.device))).float()
        token = logits.argmax(-1)
        p_fake = logits[:, self.word_ids].softmax(-1)[:, 1]
        if self.cfg["readout"] == "generate":  # the paper's hard label; other words: none
            p_fake = torch.full_like(p_fake, float("nan"))
            p_fake[token == self.word_ids[0]] = 0.0
            p_fake[token == self.word_ids[1]] = 1.0
        return p_fake, token  # on the model's device: no sync per adapter of a group

    # -- from images --------------------------------------------------------
    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The language-model loss of the caption word (image and BOS positions carry no
        label), with the head run at the one position that predicts the word."""
        return self.loss_from_features(self.features(images, "projected"), labels, "projected")

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_tokens(images)[0].cpu()

    @torch.no_grad()
    def predict_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(fake), the greedy next token) of a batch of images: one forward."""
        return self.predict_from_features(self.features(images, "projected"), "projected")

    @torch.no_grad()
    def generate_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The paper's readout as the authors ran it: greedy ``generate`` of one token;
        fake 1, real 0, any other word -1."""
        from transformers import GenerationConfig

        ids = self._prompt(images.shape[0])
        tok = self.processor.tokenizer
        # plain greedy decoding: no processors or penalties a checkpoint's own config may carry
        greedy = GenerationConfig(max_new_tokens=1, do_sample=False, num_beams=1,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
        out = self.model.generate(pixel_values=self.pixel_values(images), input_ids=ids,
                                  attention_mask=torch.ones_like(ids), generation_config=greedy)
        token = out[:, -1].cpu()
        labels = torch.full_like(token, -1)
        labels[token == self.word_ids[0]] = 0
        labels[token == self.word_ids[1]] = 1
        return labels

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(state) - {n for n, _ in self.model.named_parameters()}
        if missing:
            raise KeyError(f"checkpoint has parameters this model lacks: {sorted(missing)[:5]}")
        self.model.load_state_dict(state, strict=False)

    def lora_module_names(self) -> list[str]:
        """Names of every module that carries a LoRA adapter."""
        return lora_module_names(self.model)

    def describe(self) -> str:
        return f"Bi-LoRA (BLIP-2 {self.base_path}){getattr(self, 'imported_from', '')}"
