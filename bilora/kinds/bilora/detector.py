"""The Bi-LoRA detector: a captioning VLM fine-tuned with LoRA to caption an image ``real`` or
``fake``; the method, over any VLM base (:mod:`bilora.api.bases`; BLIP-2 in the paper).

The loss is the language-model cross-entropy on the caption word only, with the head run at
the one position that predicts it. ``P(fake)`` comes from one batched forward: the logits
of the two caption words at that position, softmaxed. The paper's readout, greedy
generation of one token, is the ``generate`` mode. The adapter folder is PEFT's
(``adapter_config.json`` + ``adapter_model.safetensors``) with the base's processor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from bilora.api.detector import Detector
from bilora.kinds.bilora import base_of, white_box
from bilora.kinds.bilora.targets import resolve_targets


def lora_config(cfg: dict[str, Any]):
    """The ``peft.LoraConfig`` of a Bi-LoRA config section (every field stated)."""
    from peft import LoraConfig

    lora = cfg["lora"]
    return LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]), bias=lora["bias"],
        modules_to_save=list(cfg["extra_trainable"]) or None,
    )


def base_model_path(cfg: dict[str, Any], base_dir: str | None) -> str:
    """Where the base comes from: a built tiny base folder, or a hub id / local path."""
    base = cfg["base_model"]
    if base["source"] == "tiny":
        if not base_dir:
            raise ValueError("Bi-LoRA with base_model.source 'tiny' needs the built base folder "
                             "(bilora build-base) passed as --base")
        return str(base_dir)
    return base["name_or_path"]


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


def caption_ids(tok: Any, captions: dict[str, str], base_path: str) -> list[int]:
    """The token ids of the real and fake caption words; ConfigError naming ``captions.*``
    when a word is empty, unknown to the tokenizer, more than one token (the logits readout
    reads one position), or the same token as the other."""
    from bilora.errors import ConfigError

    ids = []
    for name in ("real", "fake"):
        word = captions[name]
        got = tok(word, add_special_tokens=False).input_ids if word else []
        if not got or (tok.unk_token_id is not None and tok.unk_token_id in got):
            raise ConfigError(f"captions.{name}: {word!r} is not in the vocabulary of the "
                              f"tokenizer of {base_path}")
        if len(got) != 1:
            pieces = " + ".join(repr(t) for t in tok.convert_ids_to_tokens(got))
            raise ConfigError(f"captions.{name}: {word!r} is {len(got)} tokens ({pieces}) for "
                              f"the tokenizer of {base_path}; the logits readout needs one: "
                              "choose a word that is one token")
        ids.append(got[0])
    if ids[0] == ids[1]:
        raise ConfigError(f"captions: real and fake are the same token ({ids[0]}) for the "
                          f"tokenizer of {base_path}")
    return ids


def lora_module_names(model: torch.nn.Module) -> list[str]:
    """Names of every module of ``model`` that carries a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    return [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]


class BiLoRADetector(Detector):
    """A VLM base wrapped by PEFT LoRA, reading the caption word at the answer position."""

    kind = "bilora"

    def __init__(self, cfg: dict[str, Any], model, processor, base_path: str):
        super().__init__(cfg)
        self.model = model
        self.processor = processor
        self.base_path = base_path
        self.vlm = base_of(cfg)(model, processor, cfg, base_path)
        self.word_ids = caption_ids(self.vlm.tokenizer(), cfg["captions"], base_path)

    @property
    def input_size(self) -> int:
        return self.vlm.input_size

    # -- construction -------------------------------------------------------
    @classmethod
    def build(cls, cfg: dict[str, Any], seed: int, base_dir: str | None = None) -> BiLoRADetector:
        from peft import get_peft_model

        path = base_model_path(cfg, base_dir)
        base = base_of(cfg)
        model = base.load_model(path, cfg)
        resolve_targets(model, cfg)  # a ConfigError before any weight is adapted
        processor = base.load_processor(path)
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
        written as ``save_weights`` writes (:mod:`bilora.kinds.bilora.adapter_import`)."""
        from bilora.kinds.bilora.adapter_import import import_adapter

        return import_adapter(cls, source, folder, cfg, base_dir)

    @classmethod
    def load_weights(cls, folder: Path, cfg: dict[str, Any]) -> BiLoRADetector:
        from peft import PeftModel

        path = saved_base(folder)
        base = base_of(cfg)
        model = PeftModel.from_pretrained(base.load_model(path, cfg), folder)
        return cls(cfg, model, base.load_processor(folder), path)

    # -- the interface ------------------------------------------------------
    def frozen_submodules(self) -> list[torch.nn.Module]:
        return self.vlm.frozen_modules(list(self.cfg["extra_trainable"]))

    def frozen_stage(self) -> str | None:
        """The deepest stage of the image path that no training changes (its output can be
        computed once per image), from the parameters that actually train."""
        trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
        return self.vlm.frozen_stage(trainable)

    def cache_stage(self, setting: str) -> tuple[str | None, str]:
        """``feature_cache``: ``auto`` caches at the deepest frozen stage; a stage's name at
        that stage or an earlier one (a smaller cache, the later stages run each step)."""
        stage = self.frozen_stage()
        if stage is None:
            return None, "no point of the image path is frozen (its first stage trains)"
        order = self.vlm.stages.index
        if setting != "auto" and order(setting) < order(stage):
            return setting, f"the {setting} output (the later stages run each step)"
        return stage, f"the deepest frozen point ({stage})"

    def preprocessing(self) -> dict[str, Any]:
        """The loader's fit and size, then the base's image processor: its normalisation and
        its own resizing."""
        from PIL import Image

        proc = self.vlm.preprocessing()
        resize = {k: proc[k] for k in ("do_resize", "size", "resample") if k in proc}
        if isinstance(resize.get("resample"), int):  # PIL's filter number, by its name
            resize["resample"] = Image.Resampling(resize["resample"]).name.lower()
        normalise = proc.get("do_normalize", True)
        norm = {k: list(proc[f"image_{k}"]) if normalise and proc.get(f"image_{k}") is not None
                else None for k in ("mean", "std")}
        return {**super().preprocessing(), **norm, "resize": resize}

    def feature_identity(self) -> dict[str, Any]:
        from bilora.feature_cache import base_identity

        return {"base": base_identity(self.base_path), "dtype": self.cfg["dtype"],
                "preprocessing": self.vlm.preprocessing(), "size": self.input_size}

    def features(self, images: torch.Tensor, stage: str) -> torch.Tensor:
        """The image path's output at ``stage`` (a stage of the base)."""
        return self.vlm.features(images, stage)

    def _last(self, x: torch.Tensor, stage: str) -> torch.Tensor:
        return self.vlm.continue_features(stage, x.to(self.device), self.vlm.stages[-1])

    def _words(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.word_ids, device=self.device)[labels.to(self.device).long()]

    def loss_from_features(self, x: torch.Tensor, labels: torch.Tensor, stage: str
                           ) -> torch.Tensor:
        """The caption-word loss from features at ``stage`` (a frozen-feature cache)."""
        words = self._words(labels)
        logits = self.vlm.answer_logits(self._last(x, stage), words)
        return torch.nn.functional.cross_entropy(logits.float(), words)

    @torch.no_grad()
    def predict_from_features(self, x: torch.Tensor, stage: str
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(fake), the greedy next token) from features at ``stage``."""
        logits = self.vlm.answer_logits(self._last(x, stage)).float()
        token = logits.argmax(-1)
        p_fake = logits[:, self.word_ids].softmax(-1)[:, 1]
        if self.cfg["readout"] == "generate":  # the paper's hard label; other words: none
            p_fake = torch.full_like(p_fake, float("nan"))
            p_fake[token == self.word_ids[0]] = 0.0
            p_fake[token == self.word_ids[1]] = 1.0
        return p_fake, token  # on the model's device: no sync per adapter of a group

    # -- from images --------------------------------------------------------
    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        last = self.vlm.stages[-1]
        return self.loss_from_features(self.features(images, last), labels, last)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_tokens(images)[0].cpu()

    def pixel_margin(self, pixels: torch.Tensor) -> torch.Tensor:
        """The fake word's logit minus the real word's at the answer position (``readout:
        logits``), differentiable in ``pixels`` through the base's ``pixel_features``."""
        refusal = white_box(self.cfg)
        if refusal is not None:
            raise NotImplementedError(f"{refusal[0]}: {refusal[1]}")
        last = self.vlm.stages[-1]
        logits = self.vlm.answer_logits(self.vlm.pixel_features(pixels, last)).float()
        return logits[:, self.word_ids[1]] - logits[:, self.word_ids[0]]

    @torch.no_grad()
    def predict_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(fake), the greedy next token) of a batch of images: one forward."""
        last = self.vlm.stages[-1]
        return self.predict_from_features(self.features(images, last), last)

    @torch.no_grad()
    def generate_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The paper's readout as the authors ran it: greedy ``generate`` of one token;
        fake 1, real 0, any other word -1."""
        token = self.vlm.generate_token(images).cpu()
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
        imported = getattr(self, "imported_from", "")
        return f"Bi-LoRA ({self.vlm.display} {self.base_path}){imported}"
