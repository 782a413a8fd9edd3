"""Benchmark: Bi-LoRA on every registered VLM base at real widths, reduced depth, on CPU.

For each base with a shipped architecture (``bilora/bases/<base>/arch``: its smallest
checkpoint's config, no download), builds that architecture at its REAL widths and
vocabulary but ``--layers`` layers per tower, random weights, float32, LoRA r16/alpha32 on
the base's counterpart of the paper's q_proj/k_proj (``default_targets``), the processor of
its tiny stand-in resized to the real input side, and times on one thread (the process's CPU
time, medians of ``--rounds`` interleaved rounds, a batch of ``--batch`` images):

  scorer       ``predict_tokens``: one batched forward, the head at the answer position
  cache ratio  an uncached training step (``loss`` + backward + Adam) over a step from the
               cached frozen features (``loss_from_features``), and the one-off cost of the
               cache per image (``features`` at the base's deepest frozen stage)
  shared pass  7 adapters' scores from one image pass (``features`` once, then
               ``predict_from_features`` per adapter, as group scoring runs them) against 7
               separate ``predict_tokens`` passes

It also prints the base's full-depth forward FLOPs per image and parameters (``cost``, the
harness's job-sizing model) and projects the paper's matrix (paper.yaml: training generators,
epochs, images, test sets x conditions) to H100 hours WITHOUT the cache or shared passes:
cells x (epochs x train images x 3 F + test images x conditions x F) / (989 TFLOP/s bf16 x
``--mfu``), an upper bound that the measured ratios above shrink. Usage:

    python benchmarks/vlm_bases.py [--layers 2] [--batch 8] [--rounds 3] [--mfu 0.4] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
H100_BF16 = 989e12
N_ADAPTERS = 7
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "decoder_layers", "encoder_layers")


def shallow(conf: Any, layers: int, quick: bool) -> Any:
    """``conf`` with every tower's layer count set to ``layers`` (``quick``: also width 32)."""
    data = conf.to_dict()

    def walk(d: dict[str, Any]) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v)
            elif k in LAYER_KEYS and isinstance(v, int):
                d[k] = layers
        if quick:
            for k in ("hidden_size", "n_embd", "word_embed_proj_dim", "encoder_hidden_size"):
                if isinstance(d.get(k), int):
                    d[k] = 32
            for k in ("intermediate_size", "ffn_dim"):
                if isinstance(d.get(k), int):
                    d[k] = 64
            for k in ("num_attention_heads", "n_head"):
                if isinstance(d.get(k), int):
                    d[k] = 2
    walk(data)
    return type(conf).from_dict(data)


def section(name: str) -> tuple[dict[str, Any], str]:
    """(the Bi-LoRA section of base ``name``'s smallest shipped checkpoint, its hub id)."""
    from bilora.api.bases import base_class
    from bilora.api.kinds import kind
    from bilora.config import complete_detector

    base = base_class(name)
    hub = next(iter(base.shipped))
    sec = copy.deepcopy(kind("bilora").tiny)
    sec.update(base_model={"source": "pretrained", "name_or_path": hub},
               lora={"r": 16, "alpha": 32, "dropout": 0.0,
                     "target_modules": list(base.default_targets), "bias": "none"},
               extra_trainable=[], dtype="float32")
    return complete_detector(sec), hub


def build(name: str, layers: int, quick: bool, folder: Path, seed: int):
    """The Bi-LoRA detector on base ``name`` at real widths and ``layers`` layers."""
    from peft import get_peft_model

    from bilora.api.bases import base_class
    from bilora.kinds.bilora.detector import BiLoRADetector, lora_config

    base = base_class(name)
    sec, _ = section(name)
    processor = base.load_processor(base.build_tiny(base.tiny_example, folder, seed))
    _, _, side = base.cost(sec["base_model"])
    conf = shallow(base.meta_config(sec["base_model"]), layers, quick)
    if quick:
        side = base.tiny_example["image_size"]
        for sub in (v for v in vars(conf).values() if hasattr(v, "image_size")):
            sub.image_size = side
    processor.image_processor.size = {"height": side, "width": side}
    torch.manual_seed(seed)
    model = get_peft_model(base.model_class()(conf).eval(), lora_config(sec))
    return BiLoRADetector(sec, model, processor, str(folder)), side


def timed(fn, timer) -> float:
    t0 = timer()
    fn()
    return timer() - t0


@torch.no_grad()
def shared(det, images: torch.Tensor, stage: str) -> None:
    """Group scoring's path: the frozen features once, then every adapter from them."""
    x = det.features(images, stage)
    for _ in range(N_ADAPTERS):
        det.predict_from_features(x, stage)


def measure(det, side: int, batch: int, rounds: int, timer) -> dict[str, float]:
    """Medians of the paths' CPU seconds per image."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=g)
    labels = torch.arange(batch) % 2
    stage = det.frozen_stage()
    opt = torch.optim.Adam(det.trainable_parameters(), lr=1e-4)

    def step(loss_fn) -> None:
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.no_grad():
        cached = det.features(images, stage)
    paths = {
        "scorer": lambda: det.predict_tokens(images),
        "train_uncached": lambda: step(lambda: det.loss(images, labels)),
        "train_cached": lambda: step(lambda: det.loss_from_features(cached, labels, stage)),
        "cache_build": lambda: torch.no_grad()(det.features)(images, stage),
        "shared": lambda: shared(det, images, stage),
        "separate": lambda: [det.predict_tokens(images) for _ in range(N_ADAPTERS)],
    }
    det.train()
    for fn in paths.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for k, fn in paths.items():
            if k.startswith("train"):
                det.train()
            else:
                det.eval()
            times[k].append(timed(fn, timer) / batch)
    return {k: statistics.median(v) for k, v in times.items()}


def paper_hours(flops: float, mfu: float) -> float:
    """H100 hours of the paper's matrix for a base of ``flops`` forward FLOPs per image,
    without the cache or shared passes (an upper bound)."""
    from bilora import config as C

    cfg = C.load(ROOT / "workflow" / "config" / "paper.yaml")
    sample = cfg["data"]["sample"]
    cells = len(cfg["generators"]["train"])
    epochs = cfg["detectors"]["bilora"]["train"]["epochs"]
    train = 2 * sample["train_per_class"]
    test = (len(cfg["generators"]["test"]) + 1) * sample["test_fakes_per_generator"]
    per_cell = epochs * train * 3 * flops + test * len(C.conditions(cfg)) * flops
    return cells * per_cell / (H100_BF16 * mfu) / 3600


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2, help="layers per tower")
    ap.add_argument("--batch", type=int, default=8, help="images per batch")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (medians)")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed H100 utilisation")
    ap.add_argument("--quick", action="store_true",
                    help="tiny widths and images (a smoke test, not a measurement)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from bilora.api.bases import BASES, base_class

    args = parse_args(argv)
    # nothing is downloaded (set here, not on import: a test importing this module must not
    # turn its whole session offline)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    print(f"# Bi-LoRA per VLM base: real widths, {args.layers} layers per tower, batch "
          f"{args.batch}, {args.rounds} rounds, CPU time of one thread"
          + (" (QUICK: tiny widths, not a measurement)" if args.quick else ""))
    print(f"{'base':<24}{'checkpoint':<40}{'GFLOP/img':>10}{'params (M)':>11}"
          f"{'scorer img/s':>13}{'cache ratio':>12}{'cache ms/img':>13}{'shared ratio':>13}"
          f"{'paper H100-h':>13}")
    for name in BASES.names():
        base = base_class(name)
        if not base.shipped:
            print(f"{base.display:<24}(no shipped architecture: skipped)")
            continue
        sec, hub = section(name)
        flops, params, _ = base.cost(sec["base_model"])
        with tempfile.TemporaryDirectory() as d:
            det, side = build(name, args.layers, args.quick, Path(d) / "tiny", 0)
            t = measure(det, side, args.batch, args.rounds, time.process_time)
        print(f"{base.display:<24}{hub:<40}{flops / 1e9:>10.1f}{params / 1e6:>11.1f}"
              f"{1 / t['scorer']:>13.2f}{t['train_uncached'] / t['train_cached']:>12.2f}"
              f"{1e3 * t['cache_build']:>13.1f}{t['separate'] / t['shared']:>13.2f}"
              f"{paper_hours(flops, args.mfu):>13.1f}")
    print("# cache ratio: uncached training step / step from cached features; shared ratio: "
          f"{N_ADAPTERS} separate scoring passes / one image pass + {N_ADAPTERS} adapters; "
          f"paper H100-h: full-depth FLOPs at MFU {args.mfu}, no cache, no shared pass")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
