"""Captioning VLM bases for Bi-LoRA: the protocol a base module implements, and its registry.

Bi-LoRA is a method (LoRA on a language model, two caption words, the loss at the answer
position, the logits and ``generate`` readouts, adapter save/load:
``bilora/kinds/bilora/``) over a base: a vision-language captioner. A base module
(``bilora/bases/<name>/``) subclasses :class:`VLMBase` and is registered by one line in
``bilora/bases/__init__.py``'s ``BASES`` map, keyed by the checkpoint's ``config.json``
``model_type``. It holds everything particular to that model: loading (dtype, attention
kernel, 8-bit), the processor and the prompt, the image path as stages with
``stage_of(param)``, the features for the frozen-feature cache and group scoring, the
decoder call at the answer position, the image path differentiable in the pixels (white-box
attacks), its architecture on the meta device, its cost for job
sizing and its tiny random stand-in. Adding a base: ``docs/adding_a_vlm_base.md``.

The class-level methods marked torch-free run when the DAG is built.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from bilora.api.plugins import Registry
from bilora.errors import ConfigError

Section = dict[str, Any]

#: The plug-in folder of VLM bases (a package with a ``BASES`` map: model_type -> class).
BASES = Registry("VLM base (model_type)", "BASES", ("bilora.bases",))


class VLMBase(ABC):
    """One loaded captioning VLM (possibly wrapped by PEFT) as Bi-LoRA uses it.

    ``stages`` is the image path in order, from ``pixels`` to the decoder's image input;
    ``parts`` maps each module name a section may train besides LoRA (``extra_trainable``)
    to the stage it computes. A stage's output can be cached (or shared by a group of
    adapters) when nothing at or before it trains.
    """

    model_type: ClassVar[str]
    display: ClassVar[str]  # the name tables and descriptions show
    #: the module name of the language model in the whole model: ``lora.target_modules``
    #: resolve under it (``bilora/kinds/bilora/targets.py``)
    language_model: ClassVar[str] = "language_model"
    #: the LoRA targets that are this base's counterpart of the paper's q_proj/k_proj (its
    #: language model's attention projections), for configs that compare bases
    default_targets: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj")
    stages: ClassVar[tuple[str, ...]]
    parts: ClassVar[dict[str, str]]
    #: hub ids whose architecture ships with the package (no download to describe them)
    shipped: ClassVar[dict[str, Path]] = {}
    #: the schema of ``base_model.tiny`` for this base
    tiny_schema: ClassVar[Path]
    #: a small ``base_model.tiny`` section of this base (the contract test builds it)
    tiny_example: ClassVar[Section]
    #: the artifact type of a pretrained checkpoint (bilora.artifacts)
    artifact: ClassVar[str]

    def __init__(self, model: Any, processor: Any, section: Section, path: str):
        self.model, self.processor, self.section, self.path = model, processor, section, path

    # -- torch-free, at DAG build ---------------------------------------------------------
    @classmethod
    def stage_of(cls, name: str) -> str | None:
        """The stage a parameter or module name computes; None: the language model."""
        for part, stage in cls.parts.items():
            if f".{part}." in f".{name}." or name.split(".")[-1] == part:
                return stage
        return None

    @classmethod
    def frozen_stage(cls, trained: list[str]) -> str | None:
        """The deepest stage of the image path that none of the ``trained`` names changes
        (its output is a function of the image alone); None when the first stage after the
        pixels trains."""
        touched = [cls.stages.index(s) for s in map(cls.stage_of, trained) if s is not None]
        first = min(touched, default=len(cls.stages))
        return cls.stages[first - 1] if first > 1 else None

    @classmethod
    @abstractmethod
    def cost(cls, base: Section) -> tuple[float, float, int]:
        """(forward FLOPs per image, parameters, input side) of a ``base_model`` section."""

    @classmethod
    @abstractmethod
    def build_tiny(cls, tiny: Section, out_dir: str | os.PathLike, seed: int) -> Path:
        """Build the tiny random stand-in from ``base_model.tiny`` and save it (processor too)
        with ``save_pretrained`` to ``out_dir``."""

    @classmethod
    @abstractmethod
    def checkpoint_files(cls, folder: Path) -> list[Path]:
        """The files a loadable checkpoint folder holds; ArtifactError names what is missing."""

    # -- models ---------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def meta_config(cls, base: Section) -> Any:
        """The ``PretrainedConfig`` a ``base_model`` section loads, without weights."""

    @classmethod
    @abstractmethod
    def model_class(cls) -> type:
        """The transformers class of the whole model."""

    @classmethod
    @abstractmethod
    def load_model(cls, path: str, section: Section) -> Any:
        """The frozen model at ``path`` loaded as the section says (dtype, kernel, 8-bit)."""

    @classmethod
    @abstractmethod
    def load_processor(cls, path: str | Path) -> Any:
        """The processor (tokenizer and image processor) saved at ``path``."""

    @classmethod
    def memory_lines(cls, section: Section, model: Any) -> list[str]:
        """``bilora describe``'s estimate of peak training memory; none by default."""
        return ["peak GPU memory of training: no estimate for this base"]

    def inner(self) -> Any:
        """The base model under any PEFT wrapper."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") \
            else self.model

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def input_size(self) -> int:
        """Side of the square images the processor wants (its ``size``)."""
        size = self.processor.image_processor.size
        return int(size.get("height") or size.get("shortest_edge"))

    @abstractmethod
    def tokenizer(self) -> Any:
        """The tokenizer the caption words are read with."""

    @abstractmethod
    def frozen_modules(self, extra_trainable: list[str]) -> list[Any]:
        """Modules kept in eval mode during training (frozen: no dropout)."""

    @abstractmethod
    def features(self, images: Any, stage: str) -> Any:
        """The image path's output at ``stage`` for a batch of uint8 NCHW images."""

    def pixel_features(self, pixels: Any, stage: str) -> Any:
        """``features`` of float NCHW images in [0, 1] at ``input_size``, differentiable in
        ``pixels`` (the processor's resizing and normalisation as torch ops, in the model's
        dtype): white-box attacks (``Detector.pixel_margin``). A base without it raises
        NotImplementedError."""
        raise NotImplementedError(f"the {self.display} base has no differentiable image path "
                                  "(pixel_features)")

    @abstractmethod
    def continue_features(self, stage: str, x: Any, until: str) -> Any:
        """Carry features from ``stage`` on through the image path to ``until``."""

    @abstractmethod
    def answer_logits(self, x: Any, words: Any = None) -> Any:
        """Logits [N, vocab] at the position that predicts the caption word, from the image
        path's last stage ``x``; with ``words`` ([N] token ids) the sequence goes on with
        them (teacher forcing)."""

    @abstractmethod
    def generate_token(self, images: Any) -> Any:
        """The paper's readout: the greedy first generated token, [N]."""

    def preprocessing(self) -> dict[str, Any]:
        """What determines the pixels the model sees (part of a feature cache's key)."""
        return self.processor.image_processor.to_dict()


def base_class(model_type: str) -> type[VLMBase]:
    """The base registered for ``model_type``; the error lists the known ones."""
    try:
        return BASES.get(model_type)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None


def model_type_of(base: Section, default: str, key: str = "base_model") -> str:
    """The ``model_type`` of a ``base_model`` section, torch-free: stated, else (a tiny base)
    ``default``, else its checkpoint's config.json: a local folder's, a shipped
    architecture's, or the hub cache's. ConfigError names the key when none tells."""
    if base.get("model_type"):
        return base["model_type"]
    if base["source"] == "tiny":
        return default
    name = base["name_or_path"]
    for ref in BASES.refs():
        if name in base_class(ref).shipped:
            return ref
    config = Path(name).expanduser() / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(name, "config.json")
        except Exception:  # noqa: BLE001 - not a hub id, or no cache: nothing tells
            hit = None
        config = Path(hit) if isinstance(hit, str) else config
    if config.is_file():
        found = json.loads(config.read_text()).get("model_type")
        if found:
            return found
    raise ConfigError(f"{key}: cannot tell the model_type of {name!r} (no config.json locally "
                      f"or in the hub cache): run `bilora prefetch`, or set {key}.model_type "
                      f"(known: {', '.join(BASES.names())})")
