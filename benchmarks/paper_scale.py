"""Benchmark: where the paper-scale GPU time of Bi-LoRA goes, measured on CPU and projected.

Builds BLIP-2 opt-2.7b from the shipped architecture (``bilora/arch``, the paper config's
``detectors.bilora``) at its REAL widths (ViT-g 1408, Q-Former 768, OPT 2560, vocabulary
50,272, 32 query tokens, 224 px / patch 14 = 257 image tokens) but only ``--layers`` layers
per tower, random weights (re-initialised so that the image moves the logits: asserted),
float32, LoRA r16/alpha32 on q_proj/k_proj as in the paper, and times (the process's CPU
time with one thread, so that other load on the machine does not count), interleaved over
``--rounds`` rounds in one process (medians):

  (a) the authors' readout: ``generate_labels`` (greedy one-token ``generate``) at batch 1
  (b) the batched logit scorer ``predict_tokens`` (head at one position)
  (c) an uncached training step: ``loss`` + backward + Adam
  (d) a training step from cached projected embeddings (``loss_from_features``), and the
      one-off cost of the cache per image (``features(images, "projected")``)
  (e) 7 adapters scored from one shared image pass (``AdapterGroup.predict``) against 7
      separate ``predict_tokens`` passes
  and, as the harness stood before the staged path: the scorer and the training step with
  the full-vocabulary head at every position.

Per-layer times come from forward hooks on every layer and gradient hooks on the decoder
layers' inputs and outputs; FLOPs from ``torch.utils.flop_counter`` in a first (untimed)
round. Both are projected to full depth (39 / 12 / 32 layers) and the FLOPs turned into
H100 hours for the paper's matrix at an assumed sustained throughput. Usage:

    python benchmarks/paper_scale.py [--layers 2] [--batch 8] [--rounds 3] [--threads 1]
                                     [--mfu 0.4] [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the harness of this checkout, for this and the other benchmarks
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
PAPER_CONFIG = ROOT / "workflow" / "config" / "paper.yaml"
#: Per-image forward TFLOP of the issue (224 px): ViT-g, Q-Former, OPT-2.7b over 33 tokens.
ISSUE_TFLOP = {"vision": 0.52, "qformer": 0.013, "opt": 0.18}
#: H100 SXM, dense: bf16 and TF32 tensor-core and plain fp32 peak FLOP/s; HBM3 bytes/s.
H100 = {"bf16": 989e12, "tf32": 494.5e12, "fp32": 67e12, "hbm": 3.35e12}
N_ADAPTERS = 7
WORDS = {"real": 4, "fake": 5}  # any ids inside the vocabulary: the weights are random


# -- the model -------------------------------------------------------------------------------

def paper_section() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the paper config, its ``detectors.bilora`` section)."""
    from bilora import config as C

    cfg = C.load(PAPER_CONFIG)
    return cfg, cfg["detectors"]["bilora"]


def bench_config(det_cfg: dict[str, Any], layers: int, quick: bool):
    """The paper's ``Blip2Config`` with ``layers`` layers per tower (``quick``: tiny widths)."""
    from transformers import Blip2Config

    from bilora.bases.blip2.memory import blip2_config

    data = blip2_config(det_cfg).to_dict()
    for tower in ("vision_config", "qformer_config", "text_config"):
        data[tower]["num_hidden_layers"] = layers
    if quick:
        data["vision_config"].update(hidden_size=32, intermediate_size=64, num_attention_heads=2)
        data["qformer_config"].update(hidden_size=32, intermediate_size=64,
                                      num_attention_heads=2, encoder_hidden_size=32)
        data["text_config"].update(hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
                                   num_attention_heads=2)
    return Blip2Config(**data)


def full_depth(det_cfg: dict[str, Any]) -> dict[str, int]:
    from bilora.bases.blip2.memory import blip2_config

    conf = blip2_config(det_cfg)
    return {"vision": conf.vision_config.num_hidden_layers,
            "qformer": conf.qformer_config.num_hidden_layers,
            "opt": conf.text_config.num_hidden_layers}


def make_processor(conf):
    """A ``Blip2Processor`` (word-level tokenizer, ``BlipImageProcessor``) whose special
    tokens and caption words map to ids inside the vocabulary of ``conf``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Blip2Processor, BlipImageProcessor, PreTrainedTokenizerFast

    tc = conf.text_config
    vocab = {"<s>": 0, "<pad>": tc.pad_token_id, "</s>": tc.bos_token_id, "<unk>": 3, **WORDS,
             "<image>": conf.image_token_index}
    assert len(set(vocab.values())) == len(vocab) and max(vocab.values()) < tc.vocab_size
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    size = conf.vision_config.image_size
    images = BlipImageProcessor(size={"height": size, "width": size}, do_resize=True,
                                do_rescale=True, do_normalize=True, do_convert_rgb=True)
    processor = Blip2Processor(images, tokenizer, num_query_tokens=conf.num_query_tokens)
    assert tokenizer.convert_tokens_to_ids("<image>") == conf.image_token_index
    return processor


def live_init_(model: nn.Module, seed: int) -> None:
    """Re-initialise every weight so that the image path matters (MEASURED.md's "live" init:
    vision 0.02, Q-Former / projection / OPT 0.2, query tokens N(0, 0.2)); BLIP-2's own
    random init leaves the logits almost independent of the image."""
    torch.manual_seed(seed)
    done: set[int] = set()
    parts = [(model.vision_model, 0.02), (model.qformer, 0.2), (model.language_projection, 0.2),
             (model.language_model, 0.2)]
    with torch.no_grad():
        for part, std in parts:
            for m in part.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
                    m.weight.normal_(0.0, std)
                    if getattr(m, "bias", None) is not None:
                        m.bias.zero_()
                elif isinstance(m, nn.LayerNorm):
                    m.weight.fill_(1.0)
                    m.bias.zero_()
                done.update(id(p) for p in m.parameters(recurse=False))
        emb = model.vision_model.embeddings
        for p, std in ((emb.class_embedding, 0.02), (emb.position_embedding, 0.02),
                       (model.query_tokens, 0.2)):
            p.normal_(0.0, std)
            done.add(id(p))
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    assert not missed, f"parameters left uninitialised: {missed}"


def build_detector(det_cfg: dict[str, Any], conf, seed: int, device: str = "cpu",
                   dtype: str = "float32"):
    """A ``BiLoRADetector`` over a random BLIP-2 of ``conf`` built on ``device`` in ``dtype``
    (the Q-Former and query tokens float32, as transformers loads a half-precision BLIP-2;
    the LoRA weights float32, as PEFT keeps them), with the paper's LoRA as adapter
    ``default`` and ``N_ADAPTERS`` more adapters (nonzero B) for the group."""
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import Blip2ForConditionalGeneration
    from transformers.initialization import no_init_weights

    from bilora.bases.blip2 import torch_dtype
    from bilora.kinds.bilora.detector import BiLoRADetector, lora_config

    with torch.device(device), no_init_weights():  # every weight is drawn once, by live_init_
        base = Blip2ForConditionalGeneration(conf)
    base.tie_weights()
    live_init_(base, seed)
    if dtype != "float32":
        base.to(torch_dtype(dtype))
        for name in base._keep_in_fp32_modules or ():
            part = getattr(base, name)
            if isinstance(part, nn.Parameter):
                part.data = part.data.float()
            else:
                part.float()
    cfg = {**det_cfg, "dtype": dtype, "readout": "logits", "captions": {w: w for w in WORDS}}
    model = get_peft_model(base, lora_config(cfg))
    names = [f"cell{i}" for i in range(N_ADAPTERS)]
    for name in names:
        model.add_adapter(name, lora_config(cfg))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLayer):
                for name in names:
                    m.lora_B[name].weight.normal_(0.0, 0.05)
    model.set_adapter("default")
    det = BiLoRADetector(cfg, model, make_processor(conf), "random paper-scale architecture")
    return det, names


def image_effect(det, images: torch.Tensor) -> float:
    """How much the image moves the logits: max |logits(img0) - logits(img1)| / std(logits)."""
    det.eval()
    with torch.no_grad():
        logits = det.vlm.answer_logits(det.features(images[:2], "projected"))
    return float((logits[0] - logits[1]).abs().max() / logits.std())


# -- timing and FLOPs per layer ---------------------------------------------------------------

Key = tuple[str, int]


class LayerClock:
    """Seconds (and, while ``counter`` is set, FLOPs) per layer of each tower in ``layers``
    (forward hooks: keys (tower, i)), per layer backward of the tower ``backward`` (gradient
    hooks on its layers' outputs and inputs: keys (tower + "_bwd", i); layer 0's runs to the
    end of ``backward()``, its input needs no gradient), in ``head`` (key ("head", 0)),
    everything of the backward before the last timed layer's (("head_bwd", 0)) and the
    optimiser step. ``timer`` is the process's CPU time with one thread (other load on the
    machine does not count), else the wall clock."""

    def __init__(self, layers: dict[str, Sequence[nn.Module]], timer: Callable[[], float],
                 head: nn.Module | None = None, backward: str | None = None):
        self.timer = timer
        self.layers = layers
        self.bwd = backward
        self.counter = None
        self.reset()
        for tower, tower_layers in layers.items():
            for i, layer in enumerate(tower_layers):
                layer.register_forward_pre_hook(self._pre_hook((tower, i)), with_kwargs=True)
                layer.register_forward_hook(self._post_hook((tower, i)), with_kwargs=True)
        if head is not None:
            head.register_forward_pre_hook(self._pre_hook(("head", 0)), with_kwargs=True)
            head.register_forward_hook(self._post_hook(("head", 0)), with_kwargs=True)

    def reset(self) -> None:
        self.seconds: dict[Key, float] = defaultdict(float)
        self.flops: dict[Key, float] = defaultdict(float)
        self._open: dict[Key, tuple[float, float]] = {}

    def _now(self) -> tuple[float, float]:
        return self.timer(), (self.counter.get_total_flops() if self.counter else 0.0)

    def start(self, key: Key) -> None:
        self._open[key] = self._now()

    def stop(self, key: Key) -> None:
        if key in self._open:
            (t0, f0), (t1, f1) = self._open.pop(key), self._now()
            self.seconds[key] += t1 - t0
            self.flops[key] += f1 - f0

    def _pre_hook(self, key: Key):
        def hook(module, args, kwargs):
            self.start(key)
            x = args[0] if args else kwargs.get("hidden_states")
            if key[0] == self.bwd and key[1] > 0 and torch.is_tensor(x) and x.requires_grad:
                # the gradient of a layer's input is ready: its backward is done
                x.register_hook(lambda g: self.stop((f"{self.bwd}_bwd", key[1])))
        return hook

    def _post_hook(self, key: Key):
        def hook(module, args, kwargs, out):
            self.stop(key)
            y = out[0] if isinstance(out, tuple) else out
            if key[0] == self.bwd and torch.is_tensor(y) and y.requires_grad:
                last = key[1] == len(self.layers[self.bwd]) - 1

                def arrived(g):  # the gradient of its output arrived: its backward starts
                    if last:
                        self.stop(("head_bwd", 0))
                    self.start((f"{self.bwd}_bwd", key[1]))
                y.register_hook(arrived)
        return hook

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, timing the head's backward (up to the last timed layer) and
        the first layer's (whose input needs no gradient: up to the end)."""
        self.start(("head_bwd", 0))
        loss.backward()
        self.stop((f"{self.bwd}_bwd", 0))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.start(("adam", 0))
        optimizer.step()
        self.stop(("adam", 0))


class Clock(LayerClock):
    """The :class:`LayerClock` of a Bi-LoRA detector: its vision, Q-Former and decoder
    layers, the language head, the decoder's backward; which Q-Former layers cross-attend."""

    def __init__(self, det, timer: Callable[[], float]):
        base = det.model.get_base_model()
        super().__init__({"vision": base.vision_model.encoder.layers,
                          "qformer": base.qformer.encoder.layer,
                          "opt": base.language_model.model.decoder.layers},
                         timer, head=base.language_model.lm_head, backward="opt")
        self.cross = [layer.has_cross_attention for layer in self.layers["qformer"]]


def flop_counter():
    """``FlopCounterMode`` that also counts PyTorch's CPU flash attention (not in its table)."""
    from torch.utils.flop_counter import (
        FlopCounterMode,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    def forward(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, q, k, v)

    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward})


# -- the paths under measurement --------------------------------------------------------------

def legacy_logits(det, images: torch.Tensor, words: torch.Tensor | None = None):
    """The model call as the harness stood: pixels in, the full-vocabulary head at every
    position (and, with ``words``, the loss over the full-length labels)."""
    n = images.shape[0]
    ids = det.vlm.prompt_ids.unsqueeze(0).expand(n, -1)
    labels = None
    if words is not None:
        ids = torch.cat([ids, words[:, None]], 1)
        labels = torch.full_like(ids, -100)
        labels[:, -1] = words
    return det.model(pixel_values=det.vlm.pixel_values(images), input_ids=ids,
                     attention_mask=torch.ones_like(ids), labels=labels)


class Bench:
    """The paths under measurement over one model, batch and optimiser; each returns what it
    computed."""

    def __init__(self, det, names: list[str], clock: Clock, images: torch.Tensor,
                 labels: torch.Tensor, optimizer: torch.optim.Optimizer):
        from bilora.bases.blip2 import BLIP2
        from bilora.kinds.bilora.detector import BiLoRADetector
        from bilora.kinds.bilora.group import AdapterGroup, adapter_stage

        self.det, self.names, self.clock, self.optimizer = det, names, clock, optimizer
        self.images, self.labels = images, labels
        self.words = torch.tensor(det.word_ids)[labels]
        det.eval()
        with torch.no_grad():
            self.features = det.features(images, "projected")
        model = det.model
        self.views = [BiLoRADetector(det.cfg, model, det.processor, "bench").eval()
                      for _ in names]
        # AdapterGroup's own predict over these adapters (its __init__ loads saved folders)
        self.group = AdapterGroup.__new__(AdapterGroup)
        self.group.model, self.group.names, self.group.views = model, names, self.views
        stages = {adapter_stage(model, n, BLIP2) for n in names}
        assert stages == {"projected"}, stages
        self.group.stage = "projected"

    @contextmanager
    def first(self, n: int):
        """The paths on the first ``n`` images of the batch."""
        saved = self.images, self.labels, self.words, self.features
        self.images, self.labels, self.words, self.features = (x[:n] for x in saved)
        try:
            yield
        finally:
            self.images, self.labels, self.words, self.features = saved

    def generate_b1(self):
        self.det.eval()
        return torch.cat([self.det.generate_labels(self.images[i:i + 1])
                          for i in range(len(self.images))])

    def scorer(self):
        self.det.eval()
        return self.det.predict_tokens(self.images)

    def scorer_legacy(self):
        self.det.eval()
        with torch.no_grad():
            logits = legacy_logits(self.det, self.images).logits
        return logits[:, -1, self.det.word_ids].softmax(-1)[:, 1]

    def _train(self, loss_fn: Callable[[], torch.Tensor]) -> float:
        self.det.train()
        loss = loss_fn()
        self.optimizer.zero_grad(set_to_none=True)
        self.clock.backward(loss)
        self.clock.step(self.optimizer)
        return loss.item()

    def train_uncached(self):
        return self._train(lambda: self.det.loss(self.images, self.labels))

    def train_legacy(self):
        return self._train(lambda: legacy_logits(self.det, self.images, self.words).loss)

    def cache_build(self):
        self.det.eval()
        with torch.no_grad():
            return self.det.features(self.images, "projected")

    def train_cached(self):
        return self._train(lambda: self.det.loss_from_features(self.features, self.labels,
                                                               "projected"))

    def group_shared(self):
        out = self.group.predict(self.images, range(len(self.names)))
        self.det.model.set_adapter("default")
        return torch.stack([out[i][0] for i in range(len(self.names))])

    def group_separate(self):
        out = []
        for name, view in zip(self.names, self.views, strict=True):
            self.det.model.set_adapter(name)
            out.append(view.predict_tokens(self.images)[0])
        self.det.model.set_adapter("default")
        return torch.stack(out)


PATHS = {  # name: (Bench method, label)
    "a": ("generate_b1", "(a) authors' readout: generate, batch 1"),
    "b": ("scorer", "(b) batched logit scorer, head at 1 position"),
    "b0": ("scorer_legacy", "    scorer as stood: head at all 33"),
    "c": ("train_uncached", "(c) training step, uncached"),
    "c0": ("train_legacy", "    training step as stood: head at all 34"),
    "d": ("train_cached", "(d) training step from cached features"),
    "d_build": ("cache_build", "    cache build (once per image)"),
    "e_shared": ("group_shared", "(e) 7 adapters from one shared image pass"),
    "e_separate": ("group_separate", "    7 adapters, 7 separate passes"),
}
TRAINING = ("c", "c0", "d")
SCORING = ("b", "b0", "e_shared", "e_separate")
IMAGE_PATH = (*SCORING, "c", "c0", "d_build")  # every path that runs the image path batched


@dataclass
class PathStats:
    """One path: seconds (total and per hooked key) of ``images`` images per timed round;
    FLOPs per image (total and per key) from the counting round."""

    images: int
    walls: list[float] = field(default_factory=list)
    seconds: list[dict[Key, float]] = field(default_factory=list)
    flops: dict[Key, float] = field(default_factory=dict)
    total_flops: float = 0.0

    def per_image(self) -> float:
        return statistics.median(self.walls) / self.images

    def time(self, key: Key) -> float:
        """Median seconds per image in ``key``."""
        return statistics.median(s.get(key, 0.0) for s in self.seconds) / self.images

    def flop(self, key: Key) -> float:
        return self.flops.get(key, 0.0)

    def other(self) -> float:
        """Median seconds per image outside every hooked layer, head and optimiser step."""
        return statistics.median(w - sum(s.values())
                                 for w, s in zip(self.walls, self.seconds, strict=True)
                                 ) / self.images


def run_rounds(bench: Bench, rounds: int, count_images: int, log: Callable[[str], None]
               ) -> tuple[dict[str, PathStats], dict[str, Any]]:
    """Round 0 counts FLOPs on the first ``count_images`` images (untimed; it warms up too);
    rounds 1..``rounds`` time every path on the whole batch, the order rotated each round."""
    stats = {p: PathStats(images=len(bench.images)) for p in PATHS}
    outputs: dict[str, Any] = {}
    order = list(PATHS)
    for r in range(rounds + 1):
        for p in order[r % len(order):] + order[:r % len(order)]:
            method = getattr(bench, PATHS[p][0])
            bench.clock.reset()
            if r == 0:
                with bench.first(count_images), flop_counter() as counter:
                    bench.clock.counter = counter
                    outputs[p] = method()
                bench.clock.counter = None
                stats[p].flops = {k: v / count_images for k, v in bench.clock.flops.items()}
                stats[p].total_flops = counter.get_total_flops() / count_images
                continue
            t0 = bench.clock.timer()
            method()
            stats[p].walls.append(bench.clock.timer() - t0)
            stats[p].seconds.append(dict(bench.clock.seconds))
        log(f"round {r}/{rounds} done" + (" (FLOP count, untimed)" if r == 0 else ""))
    return stats, outputs


# -- projection to full depth -----------------------------------------------------------------

KINDS = ("vision", "qformer_cross", "qformer_self", "opt", "opt_bwd")


@dataclass
class Depth:
    """Layers per tower at the bench and at full depth; which bench Q-Former layers
    cross-attend (every ``cross_frequency``-th)."""

    bench: dict[str, int]
    full: dict[str, int]
    cross: list[bool]
    cross_frequency: int

    def keys(self, kind: str) -> list[Key]:
        """The hooked keys of the bench layers of one kind (the decoder backward: layers
        >= 1, the first one's input needs no gradient)."""
        b = self.bench
        return {"vision": [("vision", i) for i in range(b["vision"])],
                "qformer_cross": [("qformer", i) for i in range(b["qformer"]) if self.cross[i]],
                "qformer_self": [("qformer", i) for i in range(b["qformer"])
                                 if not self.cross[i]],
                "opt": [("opt", i) for i in range(b["opt"])],
                "opt_bwd": [("opt_bwd", i) for i in range(1, b["opt"])]}[kind]

    def extra(self) -> dict[str, int]:
        """Layers of each kind that full depth has and the bench lacks."""
        full_cross = len(range(0, self.full["qformer"], self.cross_frequency))
        bench_cross = sum(self.cross)
        return {"vision": self.full["vision"] - self.bench["vision"],
                "qformer_cross": full_cross - bench_cross,
                "qformer_self": (self.full["qformer"] - full_cross)
                - (self.bench["qformer"] - bench_cross),
                "opt": self.full["opt"] - self.bench["opt"],
                "opt_bwd": self.full["opt"] - self.bench["opt"]}


def layer_means(value: Callable[[Key], float], depth: Depth) -> dict[str, float]:
    """Mean ``value`` of one layer of each kind."""
    return {k: statistics.fmean(value(key) for key in depth.keys(k)) if depth.keys(k) else 0.0
            for k in KINDS}


#: Passes per image of the image path and of the decoder, where not 1.
PASSES = {"e_shared": {"image": 1, "decoder": N_ADAPTERS},
          "e_separate": {"image": N_ADAPTERS, "decoder": N_ADAPTERS}}


def passes(path: str, kind: str) -> int:
    part = "decoder" if kind.startswith("opt") else "image"
    return PASSES.get(path, {}).get(part, 1)


def pooled_layer_times(stats: dict[str, PathStats], depth: Depth) -> dict[str, dict[str, float]]:
    """Seconds per image of one layer of each kind in one pass, the median over every round
    of every path that runs it the same way: the image path at batch 1 (a) or batched, the
    decoder forward at batch 1 (a), scoring or training, its backward in training."""
    def pooled(paths: tuple[str, ...], kind: str) -> float:
        samples = [statistics.fmean(s.get(key, 0.0) for key in depth.keys(kind))
                   / (stats[p].images * passes(p, kind))
                   for p in paths for s in stats[p].seconds]
        return statistics.median(samples) if samples and depth.keys(kind) else 0.0
    out = {}
    for p in stats:
        image = ("a",) if p == "a" else IMAGE_PATH
        decoder = ("a",) if p == "a" else TRAINING if p in TRAINING else SCORING
        out[p] = {k: pooled(image, k) for k in ("vision", "qformer_cross", "qformer_self")}
        out[p]["opt"] = pooled(decoder, "opt")
        out[p]["opt_bwd"] = pooled(TRAINING, "opt_bwd")
    return out


def full_time(stats: dict[str, PathStats], depth: Depth) -> dict[str, float]:
    """Each path's seconds per image at full depth: the bench time plus the layers it lacks
    in each of its passes (per-layer times pooled across paths) and the optimiser step
    scaled with the number of LoRA layers."""
    layer, extra = pooled_layer_times(stats, depth), depth.extra()
    out = {}
    for p, st in stats.items():
        runs = {k for k in KINDS if any(st.time(key) > 0 for key in depth.keys(k))}
        out[p] = st.per_image() + sum(extra[k] * layer[p][k] * passes(p, k) for k in runs)
        out[p] += st.time(("adam", 0)) * (depth.full["opt"] / depth.bench["opt"] - 1)
    return out


def full_flops(st: PathStats, depth: Depth) -> dict[str, float]:
    """A path's FLOPs per image at full depth, split into the vision tower, the Q-Former and
    the rest (decoder, head, patch embedding, projection)."""
    layer, extra = layer_means(st.flop, depth), depth.extra()

    def counted(*kinds: str) -> float:
        return sum(st.flop(key) for k in kinds for key in depth.keys(k))
    vision = counted("vision") + extra["vision"] * layer["vision"]
    qformer = (counted("qformer_cross", "qformer_self") + extra["qformer_cross"]
               * layer["qformer_cross"] + extra["qformer_self"] * layer["qformer_self"])
    rest = (st.total_flops - counted("vision", "qformer_cross", "qformer_self")
            + extra["opt"] * (layer["opt"] + layer["opt_bwd"]))
    return {"vision": vision, "qformer": qformer, "rest": rest,
            "total": vision + qformer + rest}


# -- the GPU side -----------------------------------------------------------------------------

def gpu_seconds(part: dict[str, float], mfu: float, qformer_peak: float = H100["fp32"]
                ) -> float:
    """H100 seconds of a FLOP split at ``mfu`` of peak: the Q-Former at ``qformer_peak``
    (transformers keeps it in float32), the rest in bfloat16."""
    return ((part["vision"] + part["rest"]) / (H100["bf16"] * mfu)
            + part["qformer"] / (qformer_peak * mfu))


def weight_bytes(det_cfg: dict[str, Any]) -> dict[str, float]:
    """Bytes of the full-depth frozen weights per tower in the paper's dtype (bfloat16; the
    Q-Former and query tokens float32), from the model built on the meta device."""
    from bilora.kinds.bilora.describe import meta_bilora

    out = {"vision": 0.0, "qformer": 0.0, "rest": 0.0}
    for name, p in meta_bilora(det_cfg).named_parameters():
        part = ("vision" if ".vision_model." in name else
                "qformer" if ".qformer." in name or name.endswith("query_tokens") else "rest")
        out[part] += p.numel() * (4 if part == "qformer" else 2)
    return out


def baseline_flops(quick: bool) -> dict[str, dict[str, float]]:
    """Per-image FLOPs of the baselines (timm, random weights) at their paper image sizes:
    the forward, counted; a training step as 3 forwards (the backward computes input and
    weight gradients). The backward is not counted: torch's counter charges a depthwise
    convolution's backward the group count over (legacy_xception: 176 GFLOP, not ~50)."""
    import timm

    out = {}
    for name, size in (("resnet50", 224), ("legacy_xception", 299)):
        size = 64 if quick else size
        model = timm.create_model(name, pretrained=False, num_classes=1).eval()
        with flop_counter() as fc, torch.no_grad():
            model(torch.randn(1, 3, size, size))
        fwd = fc.get_total_flops()
        out[name] = {"size": size, "forward": fwd, "train": 3 * fwd}
    return out


@dataclass
class Matrix:
    """The paper's matrix, from the paper config."""

    cells: int
    epochs: int
    train_images: int
    test_images: int
    conditions: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Matrix:
        from bilora.config import conditions

        sample = cfg["data"]["sample"]
        return cls(cells=len(cfg["generators"]["train"]),
                   epochs=cfg["detectors"]["bilora"]["train"]["epochs"],
                   train_images=2 * sample["train_per_class"],
                   test_images=(len(cfg["generators"]["test"]) + 1)
                   * sample["test_fakes_per_generator"],
                   conditions=len(conditions(cfg)))

    def hours(self, flops: dict[str, dict[str, float]], baselines: dict[str, dict[str, float]],
              mfu: float, qformer_peak: float = H100["fp32"]) -> dict[str, float]:
        """H100 hours, as the harness stood and now, of Bi-LoRA training and scoring and of
        the baselines' cells (as many as Bi-LoRA's per baseline)."""
        g = {k: gpu_seconds(f, mfu, qformer_peak) for k, f in flops.items()}
        scored = self.test_images * self.conditions
        h = {"train_stood": self.cells * self.epochs * self.train_images * g["c0"],
             "train_now": self.cells * self.train_images * (g["d_build"] + self.epochs * g["d"]),
             "score_stood": self.cells * scored * g["b0"],
             "score_now": scored * g["e_shared"] * self.cells / N_ADAPTERS,
             "baselines": sum(self.cells * (self.epochs * self.train_images * b["train"]
                                            + scored * b["forward"]) for b in baselines.values()
                              ) / (H100["bf16"] * mfu)}
        h = {k: v / 3600 for k, v in h.items()}
        h["stood"] = h["train_stood"] + h["score_stood"] + h["baselines"]
        h["now"] = h["train_now"] + h["score_now"] + h["baselines"]
        return h


def set_adapter_seconds(det_cfg: dict[str, Any], n: int = N_ADAPTERS) -> tuple[float, int]:
    """(host seconds of one PEFT ``set_adapter`` call at full depth with ``n`` + 1 adapters,
    the best of 3 rounds of ``n`` calls; the model's module count), on the meta device."""
    from bilora.kinds.bilora.describe import meta_bilora
    from bilora.kinds.bilora.detector import lora_config

    with torch.device("meta"):
        model = meta_bilora(det_cfg)
        for i in range(n):
            model.add_adapter(f"cell{i}", lora_config(det_cfg))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(n):
            model.set_adapter(f"cell{i}")
        best = min(best, (time.perf_counter() - t0) / n)
    return best, sum(1 for _ in model.modules())


def batch1_seconds(flops: dict[str, float], weights: dict[str, float], mfu: float,
                   call_s: float) -> float:
    """One batch-1 generate call on an H100: per tower the slower of its compute and reading
    its weights once, plus a fixed cost per call (kernel launches, Python)."""
    return call_s + sum(max(flops[t] / (H100["fp32" if t == "qformer" else "bf16"] * mfu),
                            weights[t] / H100["hbm"]) for t in ("vision", "qformer", "rest"))


# -- the report -------------------------------------------------------------------------------

def common_args(ap: argparse.ArgumentParser) -> None:
    """The options every CPU benchmark of this folder shares: rounds, threads, MFU, seed."""
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (medians)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--mfu", type=float, default=0.4,
                    help="assumed sustained fraction of the H100's peak")
    ap.add_argument("--seed", type=int, default=0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2, help="layers per tower (>= 2)")
    ap.add_argument("--batch", type=int, default=8, help="images per batch")
    common_args(ap)
    ap.add_argument("--call-ms", type=float, default=10.0,
                    help="assumed fixed cost of one batch-1 generate call on the GPU (launches)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: tiny widths, batch 2, 1 round (figures meaningless)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.rounds = 2, 1
    if args.layers < 2:
        ap.error("--layers must be >= 2 (the decoder backward is timed on layers >= 1)")
    if args.batch < 2 or args.rounds < 1:
        ap.error("--batch must be >= 2 and --rounds >= 1")
    return args


def cpu_setup(threads: int) -> tuple[float, Callable[[], float], Callable[[str], None]]:
    """Torch on ``threads`` threads, denormals flushed; (the start, the timer: the process's
    CPU time with one thread, else the wall clock; a logger to stderr of the seconds since)."""
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f} s] {msg}", file=sys.stderr, flush=True)
    return t_start, time.process_time if threads == 1 else time.perf_counter, log


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    t_start, timer, log = cpu_setup(args.threads)

    cfg, det_cfg = paper_section()
    conf = bench_config(det_cfg, args.layers, args.quick)
    det, names = build_detector(det_cfg, conf, args.seed)
    log("model built")
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (args.batch, 3, 256, 256), dtype=torch.uint8, generator=gen)
    labels = torch.arange(args.batch) % 2
    effect = image_effect(det, images)
    assert effect > 1e-2, f"the image barely moves the logits ({effect:.2e} of their std)"
    optimizer = torch.optim.Adam(det.trainable_parameters(), lr=det_cfg["train"]["lr"])
    lora = det_cfg["lora"]
    n_trainable = sum(p.numel() for p in det.trainable_parameters())
    assert n_trainable == (args.layers * len(lora["target_modules"]) * lora["r"] * 2
                           * conf.text_config.hidden_size)
    bench = Bench(det, names, Clock(det, timer), images, labels, optimizer)
    depth = Depth(bench={"vision": args.layers, "qformer": args.layers, "opt": args.layers},
                  full=full_depth(det_cfg), cross=bench.clock.cross,
                  cross_frequency=conf.qformer_config.cross_attention_frequency)
    stats, outputs = run_rounds(bench, args.rounds, 2, log)
    agree = float((outputs["e_shared"] - outputs["e_separate"]).abs().max())
    assert agree < 1e-4, f"shared and separate adapter passes disagree by {agree:.2e}"
    side = {"baselines": baseline_flops(args.quick), "weights": weight_bytes(det_cfg),
            "set_adapter": set_adapter_seconds(det_cfg), "effect": effect, "agree": agree,
            "timed": "process CPU seconds" if args.threads == 1 else "wall seconds"}
    log("baseline FLOPs counted, set_adapter timed")
    lines = report(args, cfg, conf, depth, stats, side)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    lines.append(f"peak RSS {rss:.2f} GiB; wall {time.perf_counter() - t_start:.0f} s "
                 f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print("\n".join(lines))
    return 0


def report(args: argparse.Namespace, cfg: dict[str, Any], conf, depth: Depth,
           stats: dict[str, PathStats], side: dict[str, Any]) -> list[str]:
    """The printed report (``side``: the measurements besides the paths, see ``main``)."""
    baselines, weights = side["baselines"], side["weights"]
    effect, agree, timed = side["effect"], side["agree"], side["timed"]
    out: list[str] = []
    p = out.append
    vc, qc, tc = conf.vision_config, conf.qformer_config, conf.text_config
    lora = cfg["detectors"]["bilora"]["lora"]
    p("== Bi-LoRA at paper scale: measured on CPU, projected to full depth and an H100 ==")
    p(f"widths: ViT {vc.hidden_size}, Q-Former {qc.hidden_size}, OPT {tc.hidden_size}, vocab "
      f"{tc.vocab_size:,}, {conf.num_query_tokens} query tokens, {vc.image_size} px / patch "
      f"{vc.patch_size} = {(vc.image_size // vc.patch_size) ** 2 + 1} image tokens"
      + ("   [--quick: TINY widths, figures meaningless]" if args.quick else ""))
    p(f"depth here: {args.layers} layers per tower (full: {depth.full['vision']} ViT, "
      f"{depth.full['qformer']} Q-Former, {depth.full['opt']} OPT); random weights, re-"
      f"initialised (the image moves the logits by {effect:.2f} of their std); float32; "
      f"{args.threads} thread(s); batch {args.batch}; LoRA r{lora['r']}/a{lora['alpha']} on "
      f"{'/'.join(lora['target_modules'])}")
    p(f"timing: {timed}, median of {args.rounds} interleaved rounds; FLOPs counted by "
      "torch.utils.flop_counter in an untimed first round")
    p(f"7 adapters: P(fake) of the shared pass and of separate passes agree to {agree:.1e}")
    p("")

    # the paths
    full = full_time(stats, depth)
    p(f"{'path':<45}{'img/s':>8}{'ms/img':>8}{'other':>7}{'| full depth:':>13}"
      f"{'img/s':>7}{'s/img':>7}")
    for k, (_, label) in PATHS.items():
        st = stats[k]
        p(f"{label:<45}{1 / st.per_image():>8.2f}{1e3 * st.per_image():>8.0f}"
          f"{1e3 * st.other():>7.0f}{'':>13}{1 / full[k]:>7.3f}{full[k]:>7.2f}")
    p("(e: an image scored by all 7 adapters; other: ms outside the timed layers, head and "
      "optimiser step; full depth: plus the missing layers at the per-layer times below)")
    p("")

    # components
    layer = pooled_layer_times(stats, depth)["c"]
    score_opt = pooled_layer_times(stats, depth)["b"]["opt"]
    c_fl, b_fl = layer_means(stats["c"].flop, depth), layer_means(stats["b"].flop, depth)
    rows = [("vision layer", layer["vision"], c_fl["vision"]),
            ("Q-Former layer, cross-attending", layer["qformer_cross"], c_fl["qformer_cross"]),
            ("Q-Former layer, self-attention only", layer["qformer_self"],
             c_fl["qformer_self"]),
            ("OPT layer forward, scoring (33 tokens)", score_opt, b_fl["opt"]),
            ("OPT layer forward, training (34 tokens)", layer["opt"], c_fl["opt"]),
            ("OPT layer backward, LoRA only", layer["opt_bwd"], c_fl["opt_bwd"]),
            ("head at 1 position (scorer)", stats["b"].time(("head", 0)),
             stats["b"].flop(("head", 0))),
            ("head at 33 positions (as stood)", stats["b0"].time(("head", 0)),
             stats["b0"].flop(("head", 0))),
            ("head + loss backward, 1 position", stats["d"].time(("head_bwd", 0)),
             stats["d"].flop(("head_bwd", 0))),
            (f"Adam step ({args.layers} LoRA layers)", stats["c"].time(("adam", 0)), 0.0)]
    p(f"{'component, per image at batch ' + str(args.batch):<42}{'ms':>8}{'GFLOP':>8}"
      f"{'GFLOP/s':>9}")
    for label, sec, fl in rows:
        rate = f"{fl / sec / 1e9:>9.0f}" if sec > 0 and fl > 0 else f"{'-':>9}"
        p(f"{label:<42}{1e3 * sec:>8.1f}{fl / 1e9:>8.2f}{rate}")
    p("")

    # FLOPs at full depth against the issue's figures
    F = {k: full_flops(st, depth) for k, st in stats.items()}
    head1, head33 = stats["b"].flop(("head", 0)), stats["b0"].flop(("head", 0))
    opt_fwd = F["b"]["rest"] - head1
    p("FLOPs per image at full depth (counted here, projected)      the issue")
    p(f"  ViT-g forward                       {F['b']['vision'] / 1e12:7.3f} TFLOP      "
      f"{ISSUE_TFLOP['vision']:.3f}")
    p(f"  Q-Former forward                    {F['b']['qformer'] / 1e12:7.3f} TFLOP      "
      f"{ISSUE_TFLOP['qformer']:.3f}")
    p(f"  OPT-2.7b forward over 33 tokens     {opt_fwd / 1e12:7.3f} TFLOP      "
      f"{ISSUE_TFLOP['opt']:.3f}  (+ head: {head1 / 1e12:.4f} at 1 position, "
      f"{head33 / 1e12:.4f} at 33)")
    p(f"  LoRA-only backward / forward of a decoder layer: {c_fl['opt_bwd'] / c_fl['opt']:.2f};"
      f" uncached step {F['c']['total'] / 1e12:.3f}, cached step {F['d']['total'] / 1e12:.3f},"
      f" cache build {F['d_build']['total'] / 1e12:.3f} TFLOP")
    p("")

    # ratios
    ep = cfg["detectors"]["bilora"]["train"]["epochs"]
    here = {k: st.per_image() for k, st in stats.items()}

    def epochs(t: dict[str, float]) -> float:
        return (t["d_build"] + ep * t["d"]) / (ep * t["c"])

    def group(t: dict[str, float]) -> float:
        return t["e_separate"] / t["e_shared"]
    flops_total = {k: f["total"] for k, f in F.items()}
    p(f"{'ratio':<52}{'here':>8}{'full depth':>12}{'by FLOPs':>10}")
    for label, fn in (("(b)/(a) images/s, scorer vs batch-1 generate",
                       lambda t: t["a"] / t["b"]),
                      ("(c)/(d) uncached vs cached training step", lambda t: t["c"] / t["d"]),
                      (f"{ep} cached epochs incl. the build / {ep} uncached", epochs),
                      ("(e) 7 separate passes / one shared pass", group)):
        p(f"{label:<52}{fn(here):>8.2f}{fn(full):>12.2f}{fn(flops_total):>10.2f}")
    p("")

    # the paper matrix on an H100
    mx = Matrix.from_config(cfg)
    h = mx.hours(F, baselines, args.mfu)
    h_tf32 = mx.hours(F, baselines, args.mfu, qformer_peak=H100["tf32"])
    g = {k: 1e3 * gpu_seconds(F[k], args.mfu) for k in F}
    p(f"paper matrix on an H100: {mx.cells} Bi-LoRA cells x {mx.epochs} epochs x "
      f"{mx.train_images:,} training images; {mx.test_images:,} test images x "
      f"{mx.conditions} conditions per cell")
    p(f"assumed: {100 * args.mfu:.0f} % of {H100['bf16'] / 1e12:.0f} TFLOP/s bf16; the "
      f"Q-Former stays float32 (transformers' _keep_in_fp32_modules) at {100 * args.mfu:.0f} % "
      f"of {H100['fp32'] / 1e12:.0f} TFLOP/s; data loading not counted")
    p(f"  H100 ms per image: uncached step {g['c']:.2f} (as stood {g['c0']:.2f}), cached step "
      f"{g['d']:.2f}, cache build {g['d_build']:.2f}, scorer {g['b']:.2f} (as stood "
      f"{g['b0']:.2f}), shared pass + 7 adapters {g['e_shared']:.2f}")
    p(f"  {'GPU-hours':<52}{'as stood':>9}{'now':>9}")
    p(f"  {'Bi-LoRA training (uncached, head at 34 / cached)':<52}{h['train_stood']:>9.2f}"
      f"{h['train_now']:>9.2f}")
    p(f"  {'Bi-LoRA scoring (per cell, head at 33 / shared pass)':<52}"
      f"{h['score_stood']:>9.2f}{h['score_now']:>9.2f}")
    base = " + ".join(f"{k} {v['size']} px" for k, v in baselines.items())
    p(f"  {'14 baseline cells (' + base + ')':<52}{h['baselines']:>9.2f}{h['baselines']:>9.2f}")
    p(f"  {'total':<52}{h['stood']:>9.2f}{h['now']:>9.2f}")
    p(f"  (the float32 Q-Former costs {h['now'] - h_tf32['now']:.2f} h of 'now'; with TF32 "
      f"matmuls, {H100['tf32'] / 1e12:.0f} TFLOP/s, the total is {h_tf32['now']:.2f} h)")
    per_call, modules = side["set_adapter"]
    eval_batch = cfg["detectors"]["bilora"]["eval"]["batch_size"]
    host = (mx.test_images * mx.conditions / eval_batch * mx.cells * per_call / 3600)
    p(f"  not in the FLOPs: group scoring calls PEFT set_adapter {mx.cells} times per batch of "
      f"{eval_batch}, {1e3 * per_call:.1f} ms of host time each at full depth ({modules:,} "
      f"modules, measured here), and predict_from_features syncs with .cpu() after each: "
      f"up to {host:.2f} h more if not overlapped ({h['now'] + host:.2f} h in all)")
    calls = mx.cells * mx.test_images * mx.conditions
    b1 = batch1_seconds(F["a"], weights, args.mfu, args.call_ms / 1e3)
    p(f"  authors' readout, evaluation alone: {calls:,} batch-1 generate calls x "
      f"{1e3 * b1:.1f} ms = {calls * b1 / 3600:.0f} GPU-hours")
    p(f"    (per tower the slower of its compute and reading its weights at "
      f"{H100['hbm'] / 1e12:.2f} TB/s, + {args.call_ms:.0f} ms per call for launches and "
      "Python; the authors' 8-bit bitsandbytes base not modelled)")
    p("  sensitivity         total as stood      now   batch-1 generate evaluation at "
      "0 / 5 / 10 / 20 ms per call")
    for mfu in (0.2, 0.3, 0.4, 0.5, 0.6):
        hh = mx.hours(F, baselines, mfu)
        gen = " / ".join(f"{calls * batch1_seconds(F['a'], weights, mfu, ms / 1e3) / 3600:.0f}"
                         for ms in (0, 5, 10, 20))
        p(f"    {100 * mfu:3.0f} % MFU {hh['stood']:>19.2f}{hh['now']:>9.2f}   {gen} h")
    p("")

    ba, ep_full, grp = here["a"] / here["b"], epochs(full), group(full)
    for label, value, ok in (
            ("(b)/(a) >= 1.15 on CPU", ba, ba >= 1.15),
            (f"{ep} cached epochs incl. the build <= 0.50 of {ep} uncached (full depth)",
             ep_full, ep_full <= 0.5),
            ("(e) 7 adapters >= 2.5x (full depth)", grp, grp >= 2.5),
            (f"paper matrix <= 8 H100-hours at {100 * args.mfu:.0f} % MFU (FLOPs)", h["now"],
             h["now"] <= 8)):
        p(f"{'PASS' if ok else 'MISS'}  {label}: {value:.2f}")
    return out


if __name__ == "__main__":
    sys.exit(main())
