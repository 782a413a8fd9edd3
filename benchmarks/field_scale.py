"""Benchmark: the field's detectors (UnivFD, LoRA on CLIP, NPR) at real size on CPU, and the
field matrix projected to H100 hours.

Builds the CLIP ViT-L/14 vision tower at its REAL widths (hidden 1024, MLP 4096, 16 heads,
patch 14, 224 px, projection 768) with ``--layers`` layers and random weights, saved and
loaded by the kinds' own code (``baselines._clip.build_tiny``), and NPR (ResNet-50 to
``layer2``) at 224 px, full depth. Times (the process's CPU time with one thread, medians of
``--rounds`` interleaved rounds, per-layer times from forward and gradient hooks):

  (1) UnivFD training, through the shared loop (``bilora.training.train_detector``): one
      epoch from ``--images`` images (the tower frozen: its forward, the head's loss,
      backward and Adam) against the frozen-feature cache (``feature_cache.prepare``: the
      build, then ``--epochs`` epochs from its ``FeatureTable`` with ``loss_from_features``);
  (2) 7 UnivFD cells scored from one tower pass (``HeadGroup.predict``) against 7 separate
      ``predict_proba`` passes;
  (3) scorer and training step images/s of NPR and of LoRA on CLIP.

The CLIP figures are projected to the full 24 layers (the tower's cost scales with its
layers, the head's does not); FLOPs counted by ``torch.utils.flop_counter`` in an untimed
pass turn into H100 hours for the field matrix (8 training generators: the paper's 7 and
ProGAN) at an assumed sustained throughput, as ``benchmarks/paper_scale.py`` does; Bi-LoRA's
row comes from the H200 measurement in ``benchmarks/results/gpu_check_h200.json``. Usage:

    python benchmarks/field_scale.py [--layers 2] [--images 64] [--batch 8] [--epochs 100]
                                     [--rounds 3] [--threads 1] [--mfu 0.4] [--quick]
                                     [--out PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import paper_scale as ps  # noqa: E402  (puts this checkout first and the hub offline)

GPU_CHECK = HERE / "results" / "gpu_check_h200.json"
FIELD_CELLS = 8  # the paper's 7 training generators and ProGAN
N_HEADS = 7  # UnivFD cells scored from one tower pass in (2)
#: Epochs of the recipes without one in the paper config: NPR's README (50), Effort's (10).
RECIPE_EPOCHS = {"npr": 50, "clip_lora": 10}
CACHE_TARGET, GROUP_TARGET = 1.2, 5.0
LARGE = 64  # the cached epochs' per-image cost: a table LARGE x --images rows long
TINY = {"width": 32, "heads": 2, "projection_dim": 32}  # --quick: tiny widths


# -- the detectors ----------------------------------------------------------------------------

def geometry(layers: int, quick: bool) -> dict[str, int]:
    """ViT-L/14 at 224 px with ``layers`` layers (``quick``: tiny widths)."""
    from baselines._clip import VIT_L14

    return {**VIT_L14, "layers": layers, **(TINY if quick else {})}


def sections(g: dict[str, int], epochs: int, quick: bool) -> dict[str, dict[str, Any]]:
    """The completed sections of the three kinds: UnivFD with the authors' optimiser and
    batch (the cache on), LoRA on CLIP as ``field-embedded.yaml``, NPR as its authors."""
    from bilora.config import complete_detector

    base = {"source": "tiny", "tiny": g}
    return {
        "univfd": complete_detector({
            "kind": "univfd", "base_model": base, "feature_cache": "auto",
            "train": {"epochs": epochs, "batch_size": 256, "lr": 1e-4, "optimizer": "adam"},
            "eval": {"batch_size": 64}}),
        "clip_lora": complete_detector({
            "kind": "clip_lora", "base_model": base,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
                     "bias": "none"},
            "train": {"epochs": RECIPE_EPOCHS["clip_lora"], "batch_size": 32, "lr": 2e-4,
                      "optimizer": "adam", "weight_decay": 5e-4}}),
        "npr": complete_detector({
            "kind": "npr", "image_size": 64 if quick else 224,
            "train": {"epochs": RECIPE_EPOCHS["npr"], "batch_size": 32, "lr": 2e-4,
                      "optimizer": "adam"}}),
    }


def head_group(sec: dict[str, Any], base: Path, folder: Path, seed: int):
    """A ``HeadGroup`` of ``N_HEADS`` UnivFD cells on the tower at ``base``, built from saved
    model folders (heads drawn with seeds ``seed`` + i) as the workflow scores them."""
    from baselines.univfd.detector import HeadGroup, UnivFDDetector

    folders = []
    for i in range(N_HEADS):
        det = UnivFDDetector.build(sec, seed + i, str(base))
        out = folder / f"cell{i}"
        out.mkdir(parents=True)
        det.save_weights(out)
        folders.append(out)
    return HeadGroup(folders, [sec] * N_HEADS, torch.device("cpu"))


def clip_layers(det) -> Any:
    """The encoder layers of a CLIP detector's tower (under PEFT for LoRA on CLIP)."""
    tower = det.tower.get_base_model() if hasattr(det.tower, "get_base_model") else det.tower
    return tower.vision_model.encoder.layers


def large_epochs(epochs: int) -> int:
    """Cached epochs timed on the large table."""
    return max(1, epochs // 10)


# -- timing -----------------------------------------------------------------------------------

def timed(st: ps.PathStats, clock: ps.LayerClock, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` once under ``clock``; its seconds (total and per hooked key) go to ``st``."""
    clock.reset()
    t0 = clock.timer()
    out = fn()
    st.walls.append(clock.timer() - t0)
    st.seconds.append(dict(clock.seconds))
    return out


def train_step(det, clock: ps.LayerClock, opt: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor) -> float:
    """One training step as the shared loop runs it: loss, backward, optimiser step."""
    det.train()
    loss = det.loss(images, labels)
    opt.zero_grad(set_to_none=True)
    clock.backward(loss)
    clock.step(opt)
    return loss.item()


def count(clock: ps.LayerClock, n: int, fn: Callable[[], Any]) -> tuple[float, dict]:
    """(FLOPs per image of ``fn`` over ``n`` images, FLOPs per image per hooked key)."""
    clock.reset()
    with ps.flop_counter() as counter:
        clock.counter = counter
        fn()
    clock.counter = None
    return counter.get_total_flops() / n, {k: v / n for k, v in clock.flops.items()}


class Field:
    """Every detector, its clock, data and optimiser; ``units`` are the timed paths."""

    def __init__(self, args: argparse.Namespace, work: Path, timer: Callable[[], float]):
        from baselines._clip import build_tiny
        from baselines.clip_lora.detector import ClipLoRADetector
        from baselines.npr.detector import NPRDetector
        from baselines.univfd.detector import UnivFDDetector
        from bilora.training import make_optimizer

        self.args, self.work = args, work
        self.timed = "process CPU seconds" if args.threads == 1 else "wall seconds"
        self.g = geometry(args.layers, args.quick)
        self.secs = sections(self.g, args.epochs, args.quick)
        self.base = build_tiny({"tiny": self.g}, work / "base", args.seed)
        self.univfd = UnivFDDetector.build(self.secs["univfd"], args.seed, str(self.base))
        self.group = head_group(self.secs["univfd"], self.base, work / "cells", args.seed)
        self.lora = ClipLoRADetector.build(self.secs["clip_lora"], args.seed, str(self.base))
        self.npr = NPRDetector.build(self.secs["npr"], args.seed)
        self.clocks = {
            "univfd": ps.LayerClock({"vision": clip_layers(self.univfd)}, timer),
            "group": ps.LayerClock({"vision": clip_layers(self.group.views[0])}, timer),
            "clip_lora": ps.LayerClock({"vision": clip_layers(self.lora)}, timer,
                                       backward="vision"),
            "npr": ps.LayerClock({}, timer),
        }
        self.opts = {k: make_optimizer(det.trainable_parameters(), self.secs[k]["train"])
                     for k, det in (("clip_lora", self.lora), ("npr", self.npr))}
        gen = torch.Generator().manual_seed(args.seed)
        side = self.g["image_size"]
        self.images = torch.randint(0, 256, (args.images, 3, side, side), dtype=torch.uint8,
                                    generator=gen)
        self.labels = torch.arange(args.images) % 2
        self.batch, self.batch_labels = self.images[:args.batch], self.labels[:args.batch]
        npr_side = self.secs["npr"]["image_size"]
        self.npr_batch = torch.randint(0, 256, (args.batch, 3, npr_side, npr_side),
                                       dtype=torch.uint8, generator=gen)
        self.stats = {k: ps.PathStats(images=n) for k, n in (
            ("uncached_epoch", args.images), ("cache_build", args.images),
            ("cached_epochs", args.images), ("cached_large", LARGE * args.images),
            ("group_shared", args.batch),
            ("group_separate", args.batch), ("clip_lora_score", args.batch),
            ("clip_lora_train", args.batch), ("npr_score", args.batch),
            ("npr_train", args.batch))}
        self.outputs: dict[str, Any] = {}
        self.large = self._large_table()

    def _large_table(self):
        """A ``FeatureTable`` of ``LARGE`` x ``--images`` random embeddings (the per-image
        cost of a cached epoch, apart from its fixed cost)."""
        import numpy as np

        from bilora.atomic import write_json
        from bilora.feature_cache import FeatureTable

        n = LARGE * self.args.images
        path = self.work / "large.npy"
        gen = np.random.default_rng(self.args.seed)
        np.save(path, gen.standard_normal((n, self.g["projection_dim"]), dtype=np.float32))
        write_json(path.with_suffix(".json"), {"stage": "image_embeds", "dtype": "torch.float32",
                                               "images": n})
        return FeatureTable(path, [i % 2 for i in range(n)])

    # the timed units, each one or two paths
    def _train(self, epochs: int, dataset, loss_fn=None) -> list[dict[str, float]]:
        from bilora.training import train_detector

        cfg = {**self.secs["univfd"]["train"], "epochs": epochs}
        folder = Path(tempfile.mkdtemp(dir=self.work, prefix="ckpt"))  # a fresh run, no resume
        return train_detector(self.univfd, dataset, cfg, self.args.seed, folder, "bench",
                              progress=False, loss_fn=loss_fn)

    def uncached(self) -> None:
        data = torch.utils.data.TensorDataset(self.images, self.labels)
        timed(self.stats["uncached_epoch"], self.clocks["univfd"], lambda: self._train(1, data))

    def cached(self) -> None:
        import pandas as pd

        from bilora import feature_cache

        data = torch.utils.data.TensorDataset(self.images, self.labels)
        rows = pd.DataFrame({"sha1": [f"{i:040x}" for i in range(len(self.labels))],
                             "label": self.labels.tolist()})
        folder = Path(tempfile.mkdtemp(dir=self.work, prefix="cache"))  # a fresh cache
        plan = timed(self.stats["cache_build"], self.clocks["univfd"],
                     lambda: feature_cache.prepare(self.univfd, data, rows, None, folder,
                                                   augmenting=False, progress=False))
        assert plan.stage == "image_embeds", plan.note
        hist = timed(self.stats["cached_epochs"], self.clocks["univfd"],
                     lambda: self._train(self.args.epochs, plan.dataset, plan.loss_fn))
        assert len(hist) == self.args.epochs

    def cached_large(self) -> None:
        def loss_fn(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return self.univfd.loss_from_features(x, labels)
        timed(self.stats["cached_large"], self.clocks["univfd"],
              lambda: self._train(large_epochs(self.args.epochs), self.large, loss_fn))

    def group_shared(self) -> None:
        out = timed(self.stats["group_shared"], self.clocks["group"],
                    lambda: self.group.predict(self.batch, range(N_HEADS)))
        self.outputs["shared"] = torch.stack([out[i][0] for i in range(N_HEADS)])

    def group_separate(self) -> None:
        out = timed(self.stats["group_separate"], self.clocks["group"],
                    lambda: [v.predict_proba(self.batch) for v in self.group.views])
        self.outputs["separate"] = torch.stack(out)

    def lora_score(self) -> None:
        self.lora.eval()
        timed(self.stats["clip_lora_score"], self.clocks["clip_lora"],
              lambda: self.lora.predict_proba(self.batch))

    def lora_train(self) -> None:
        timed(self.stats["clip_lora_train"], self.clocks["clip_lora"],
              lambda: train_step(self.lora, self.clocks["clip_lora"], self.opts["clip_lora"],
                                 self.batch, self.batch_labels))

    def npr_score(self) -> None:
        self.npr.eval()
        timed(self.stats["npr_score"], self.clocks["npr"],
              lambda: self.npr.predict_proba(self.npr_batch))

    def npr_train(self) -> None:
        timed(self.stats["npr_train"], self.clocks["npr"],
              lambda: train_step(self.npr, self.clocks["npr"], self.opts["npr"], self.npr_batch,
                                 self.batch_labels))

    def units(self) -> list[Callable[[], None]]:
        return [self.uncached, self.cached, self.cached_large, self.group_shared,
                self.group_separate, self.lora_score, self.lora_train, self.npr_score,
                self.npr_train]

    def run(self, log: Callable[[str], None]) -> None:
        """Every unit once per round, the order rotated each round."""
        units = self.units()
        for r in range(self.args.rounds):
            for unit in units[r % len(units):] + units[:r % len(units)]:
                unit()
            log(f"round {r + 1}/{self.args.rounds} done")

    def flops(self) -> dict[str, Any]:
        """FLOPs per image (untimed; it warms every path up too): totals and per layer."""
        two, labels = self.batch[:2], self.batch_labels[:2]
        c = self.clocks
        out: dict[str, Any] = {}
        self.univfd.eval()
        out["tower"] = count(c["univfd"], 2, lambda: self.univfd.predict_proba(two))
        x = self.univfd.features(two)
        opt = torch.optim.Adam(self.univfd.trainable_parameters())

        def head_step() -> None:
            loss = self.univfd.loss_from_features(x, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out["head_train"] = count(c["univfd"], 2, head_step)
        out["head_fwd"] = count(c["univfd"], 2, lambda: self.univfd.predict_from_features(x))
        self.lora.eval()
        out["clip_lora_score"] = count(c["clip_lora"], 2, lambda: self.lora.predict_proba(two))
        out["clip_lora_train"] = count(c["clip_lora"], 2, lambda: train_step(
            self.lora, c["clip_lora"], self.opts["clip_lora"], two, labels))
        self.npr.eval()
        out["npr_score"] = count(c["npr"], 2, lambda: self.npr.predict_proba(self.npr_batch[:2]))
        out["npr_train"] = count(c["npr"], 2, lambda: train_step(
            self.npr, c["npr"], self.opts["npr"], self.npr_batch[:2], labels))
        return out


# -- projection to full depth -----------------------------------------------------------------

def layer_mean(values: dict, bench: int, tower: str = "vision", first: int = 0) -> float:
    """Mean over the bench layers ``first``.. of ``values[(tower, i)]``."""
    return statistics.fmean(values.get((tower, i), 0.0) for i in range(first, bench))


def layer_time(stats: dict[str, ps.PathStats], paths: dict[str, int], bench: int,
               tower: str = "vision", first: int = 0) -> float:
    """Seconds per image of one layer in one pass: the median over every round of every path
    in ``paths`` (path: passes per image)."""
    return statistics.median(layer_mean(s, bench, tower, first) / (stats[p].images * n)
                             for p, n in paths.items() for s in stats[p].seconds)


def projections(field: Field, flops: dict[str, Any]) -> dict[str, Any]:
    """Seconds and FLOPs per image of each path, here and at full depth (24 layers)."""
    from baselines._clip import VIT_L14

    st, bench = field.stats, field.args.layers
    extra = VIT_L14["layers"] - bench
    fwd = layer_time(st, {"uncached_epoch": 1, "cache_build": 1, "group_shared": 1,
                          "group_separate": N_HEADS}, bench)
    lora_fwd = layer_time(st, {"clip_lora_score": 1}, bench)
    lora_train = (layer_time(st, {"clip_lora_train": 1}, bench)
                  + layer_time(st, {"clip_lora_train": 1}, bench, "vision_bwd", first=1))
    here = {k: s.per_image() for k, s in st.items()}
    add = {"uncached_epoch": fwd, "cache_build": fwd, "cached_epochs": 0.0, "cached_large": 0.0,
           "group_shared": fwd, "group_separate": N_HEADS * fwd,
           "clip_lora_score": lora_fwd, "clip_lora_train": lora_train,
           "npr_score": 0.0, "npr_train": 0.0}
    full = {k: here[k] + extra * add[k] for k in here}
    adam = st["clip_lora_train"].time(("adam", 0))
    full["clip_lora_train"] += adam * extra / bench  # LoRA parameters scale with the layers
    return {"here": here, "full": full, "layer_s": {"tower_fwd": fwd, "clip_lora_fwd": lora_fwd,
                                                    "clip_lora_train": lora_train},
            "flops_full": full_depth_flops(flops, bench),
            "flops_bench_tower": flops["tower"][0]}


def full_depth_flops(flops: dict[str, Any], bench: int) -> dict[str, float]:
    """FLOPs per image of each path (``Field.flops``), the CLIP tower's projected from
    ``bench`` layers to 24 (also ``benchmarks/attack_cost.py``'s per-image forwards)."""
    from baselines._clip import VIT_L14

    extra = VIT_L14["layers"] - bench

    def full_flops(key: str, bwd: bool = False) -> float:
        total, per = flops[key]
        layer = layer_mean(per, bench) + (layer_mean(per, bench, "vision_bwd", 1) if bwd else 0)
        return total + extra * layer
    return {"tower_fwd": full_flops("tower"), "head_fwd": flops["head_fwd"][0],
            "head_train": flops["head_train"][0],
            "clip_lora_score": full_flops("clip_lora_score"),
            "clip_lora_train": full_flops("clip_lora_train", bwd=True),
            "npr_score": flops["npr_score"][0], "npr_train": flops["npr_train"][0]}


# -- the field matrix on a GPU ----------------------------------------------------------------

def bilora_h200(path: Path, matrix: ps.Matrix) -> dict[str, float] | None:
    """Bi-LoRA's H200 hours for ``matrix`` from the measured images/s of ``gpu_check.py``:
    training from the cache (the build once, ``matrix.epochs`` cached epochs), scoring with
    one image pass for the cells' adapters (from the measured 7-adapter shared and separate
    passes: an image pass I and a decoder pass D per adapter, 7 (I + D) and I + 7 D)."""
    if not path.is_file():
        return None
    sp = json.loads(path.read_text())["speed"]
    s = {k: 1 / v["images_per_s"] for k, v in sp.items()}
    n = ps.N_ADAPTERS
    decoder = (s["group_shared"] - s["group_separate"] / n) / (n - 1)
    image = s["group_shared"] - n * decoder
    train = matrix.cells * matrix.train_images * (s["cache_build"]
                                                  + matrix.epochs * s["train_cached"])
    score = matrix.test_images * matrix.conditions * (image + matrix.cells * decoder)
    return {"train": train / 3600, "score": score / 3600, "image_ms": 1e3 * image,
            "decoder_ms": 1e3 * decoder}


def gpu_hours(proj: dict[str, Any], baselines: dict[str, dict[str, float]],
              cfg: dict[str, Any], epochs: int, mfu: float) -> tuple[ps.Matrix, dict]:
    """(the field matrix, H100 hours per detector: train, score, total, how obtained)."""
    base = ps.Matrix.from_config(cfg)
    mx = dataclasses.replace(base, cells=FIELD_CELLS)
    fl = proj["flops_full"]
    train_n, scored = mx.cells * mx.train_images, mx.test_images * mx.conditions

    def sec(flop: float) -> float:
        return ps.gpu_seconds({"vision": flop, "qformer": 0.0, "rest": 0.0}, mfu) / 3600

    rows = {
        "UnivFD": (train_n * sec(fl["tower_fwd"] + epochs * fl["head_train"]),
                   scored * sec(fl["tower_fwd"] + mx.cells * fl["head_fwd"]),
                   f"projected (FLOPs): cache + {epochs} cached epochs; 1 shared pass"),
        "NPR": (train_n * RECIPE_EPOCHS["npr"] * sec(fl["npr_train"]),
                mx.cells * scored * sec(fl["npr_score"]),
                f"projected (FLOPs): {RECIPE_EPOCHS['npr']} epochs"),
        "LoRA on CLIP": (train_n * RECIPE_EPOCHS["clip_lora"] * sec(fl["clip_lora_train"]),
                         mx.cells * scored * sec(fl["clip_lora_score"]),
                         f"projected (FLOPs): {RECIPE_EPOCHS['clip_lora']} epochs"),
    }
    for name, label in (("resnet50", "ResNet50"), ("legacy_xception", "Xception")):
        b = baselines[name]
        ep = cfg["detectors"]["resnet50" if name == "resnet50" else "xception"]["train"]["epochs"]
        rows[label] = (train_n * ep * sec(b["train"]), mx.cells * scored * sec(b["forward"]),
                       f"projected (FLOPs, train = 3 fwd): {ep} epochs, {b['size']} px")
    bl = bilora_h200(GPU_CHECK, dataclasses.replace(
        mx, epochs=cfg["detectors"]["bilora"]["train"]["epochs"]))
    if bl is not None:
        rows["Bi-LoRA"] = (bl["train"], bl["score"],
                           f"measured H200 img/s ({GPU_CHECK.name}), not an H100: "
                           f"{cfg['detectors']['bilora']['train']['epochs']} cached epochs, "
                           f"{mx.cells} adapters per image pass")
    hours = {k: {"train": t, "score": s, "total": t + s, "source": src}
             for k, (t, s, src) in rows.items()}
    return mx, hours


# -- the report -------------------------------------------------------------------------------

def report(args: argparse.Namespace, field: Field, proj: dict[str, Any], mx: ps.Matrix,
           hours: dict[str, dict[str, Any]], agree: float) -> tuple[list[str], dict[str, Any]]:
    """The printed lines and the figures for ``--out``."""
    from baselines._clip import VIT_L14, cost

    out: list[str] = []
    p = out.append
    g, E, n, b = field.g, args.epochs, args.images, args.batch
    here, full = proj["here"], proj["full"]
    p("== The field's detectors at real size: measured on CPU, projected to full depth and "
      "an H100 ==")
    p(f"CLIP tower: hidden {g['width']}, MLP {4 * g['width']}, {g['heads']} heads, "
      f"{g['image_size']} px / patch {g['patch_size']}, projection {g['projection_dim']}; "
      f"{args.layers} of {VIT_L14['layers']} layers, random weights; NPR ResNet-50 to layer2 "
      f"at {field.secs['npr']['image_size']} px (full depth)"
      + ("   [--quick: TINY widths, figures meaningless]" if args.quick else ""))
    p(f"timing: {field.timed}, median of {args.rounds} interleaved rounds; float32; "
      f"{args.threads} thread(s); FLOPs by torch.utils.flop_counter in an untimed pass")
    p("")

    # (1) UnivFD cache
    U, B, C = (here[k] * n for k in ("uncached_epoch", "cache_build", "cached_epochs"))
    Uf, Bf = full["uncached_epoch"] * n, full["cache_build"] * n
    ratio, ratio_full = (B + C) / U, (Bf + C) / Uf
    p(f"(1) UnivFD training on {n} images of {g['image_size']} px "
      "(bilora.training.train_detector; cache: bilora.feature_cache.prepare + FeatureTable)")
    p(f"  {'':<44}{'s here':>9}{'s at 24 layers':>16}")
    p(f"  {'one uncached epoch (tower fwd, head + Adam)':<44}{U:>9.2f}{Uf:>16.2f}")
    p(f"  {'cache build (tower fwd once, memmap .npy)':<44}{B:>9.2f}{Bf:>16.2f}")
    p(f"  {f'{E} cached epochs (head + Adam + checkpoint)':<44}{C:>9.2f}{C:>16.2f}"
      f"   ({1e3 * C / E:.1f} ms per epoch)")
    p(f"  (cache build + {E} cached epochs) / one uncached epoch: {ratio:.3f} here, "
      f"{ratio_full:.3f} at 24 layers (target <= {CACHE_TARGET})")
    p(f"  {E} uncached epochs would take {E * U:.0f} s here, {E * Uf:.0f} s at 24 layers: "
      f"the cache saves {E * Uf / (Bf + C):.0f}x")
    p("")

    # (2) group
    sh, sep = here["group_shared"], here["group_separate"]
    shf, sepf = full["group_shared"], full["group_separate"]
    group, group_full = sep / sh, sepf / shf
    p(f"(2) {N_HEADS} UnivFD cells on {b} images: one tower pass (HeadGroup.predict) vs "
      f"{N_HEADS} predict_proba passes; P(fake) agree to {agree:.1e}")
    p(f"  {'':<44}{'ms/img':>9}{'ms/img, 24 layers':>19}")
    p(f"  {'one shared pass, 7 heads':<44}{1e3 * sh:>9.0f}{1e3 * shf:>19.0f}")
    p(f"  {'7 separate passes':<44}{1e3 * sep:>9.0f}{1e3 * sepf:>19.0f}")
    p(f"  separate / shared: {group:.2f}x here, {group_full:.2f}x at 24 layers "
      f"(target >= {GROUP_TARGET:.0f}x)")
    p("")

    # (3) throughput
    p(f"(3) images/s at batch {b} (1 thread){'':<10}{'here':>8}{'at 24 layers':>14}")
    for key, label in (("clip_lora_score", "LoRA on CLIP, scorer (predict_proba)"),
                       ("clip_lora_train", "LoRA on CLIP, training step (LoRA + head)"),
                       ("npr_score", "NPR, scorer (predict_proba)"),
                       ("npr_train", "NPR, training step (from scratch)"),
                       ("group_shared", "UnivFD, scorer (one pass)")):
        depth = f"{1 / full[key]:>14.2f}" if key not in ("npr_score", "npr_train") else \
            f"{'(full)':>14}"
        p(f"  {label:<44}{1 / here[key]:>8.2f}{depth}")
    ls = proj["layer_s"]
    p(f"  per CLIP layer and image: forward {1e3 * ls['tower_fwd']:.0f} ms (frozen), "
      f"{1e3 * ls['clip_lora_fwd']:.0f} ms (LoRA), forward + backward in LoRA training "
      f"{1e3 * ls['clip_lora_train']:.0f} ms")
    p("")

    # FLOPs
    fl = proj["flops_full"]
    formula = cost({"base_model": {"source": "tiny",
                                   "tiny": {**g, "layers": VIT_L14["layers"]}}}, 1.0, 0.0)
    from baselines.npr import forward_macs

    p("FLOPs per image (counted; the CLIP tower projected to 24 layers)     the kinds' cost")
    p(f"  CLIP tower forward                 {fl['tower_fwd'] / 1e9:9.1f} GFLOP"
      f"{formula.forward_flops / 1e9:>21.1f}")
    p(f"  LoRA on CLIP training step         {fl['clip_lora_train'] / 1e9:9.1f} GFLOP"
      f"   ({fl['clip_lora_train'] / fl['clip_lora_score']:.2f} x its forward)")
    side = field.secs["npr"]["image_size"]
    p(f"  NPR forward                        {fl['npr_score'] / 1e9:9.2f} GFLOP"
      f"{2 * forward_macs(side) / 1e9:>21.2f}")
    p(f"  NPR training step                  {fl['npr_train'] / 1e9:9.2f} GFLOP"
      f"   ({fl['npr_train'] / fl['npr_score']:.2f} x its forward)")
    p(f"  UnivFD head: forward {fl['head_fwd']:.0f} FLOP, training step "
      f"{fl['head_train']:.0f} FLOP")
    p("")

    # the matrix
    p(f"field matrix: {mx.cells} training generators (the paper's 7 + ProGAN) x "
      f"{mx.train_images:,} training images; {mx.cells} cells x {mx.test_images:,} test "
      f"images x {mx.conditions} conditions")
    p(f"H100 projection: counted FLOPs at {100 * args.mfu:.0f} % of "
      f"{ps.H100['bf16'] / 1e12:.0f} TFLOP/s bf16 (paper_scale.gpu_seconds); data loading "
      "and decoding not counted")
    p(f"  {'detector':<14}{'training h':>11}{'scoring h':>11}{'total h':>10}   how")
    for name, h in hours.items():
        p(f"  {name:<14}{h['train']:>11.2f}{h['score']:>11.2f}{h['total']:>10.2f}   "
          f"{h['source']}")
    total = sum(h["total"] for h in hours.values())
    p(f"  {'all':<14}{sum(h['train'] for h in hours.values()):>11.2f}"
      f"{sum(h['score'] for h in hours.values()):>11.2f}{total:>10.2f}")
    # a cached epoch: a fixed cost (the checkpoint, the loader) and a cost per image
    big_n, big_e = LARGE * n, large_epochs(E)
    per_img = (here["cached_large"] * big_n / big_e - C / E) / (big_n - n)
    fixed = C / E - n * per_img
    host_h = mx.cells * E * (fixed + mx.train_images * per_img) / 3600
    p(f"  not in the FLOPs: a cached UnivFD epoch costs {1e3 * fixed:.1f} ms + "
      f"{1e6 * per_img:.1f} us per image of host CPU (loader, head, Adam, checkpoint; from "
      f"{n} and {big_n} rows); {mx.cells} cells x {E} epochs x {mx.train_images:,} images: "
      f"{host_h:.2f} CPU-hours")
    p("measured: every CPU time above; the Bi-LoRA row (H200, gpu_check.py). Projected: the "
      "24-layer figures (per-layer times and FLOPs), the GPU-hours of every other row.")
    p("")

    verdicts = [
        (f"UnivFD (cache build + {E} cached epochs) / one uncached epoch <= {CACHE_TARGET} "
         "(here)", ratio, ratio <= CACHE_TARGET),
        (f"UnivFD (cache build + {E} cached epochs) / one uncached epoch <= {CACHE_TARGET} "
         "(24 layers)", ratio_full, ratio_full <= CACHE_TARGET),
        (f"{N_HEADS} UnivFD cells, separate / shared pass >= {GROUP_TARGET:.0f}x (here)",
         group, group >= GROUP_TARGET),
        (f"{N_HEADS} UnivFD cells, separate / shared pass >= {GROUP_TARGET:.0f}x (24 layers)",
         group_full, group_full >= GROUP_TARGET)]
    for label, value, ok in verdicts:
        p(f"{'PASS' if ok else 'MISS'}  {label}: {value:.2f}")

    figures = {
        "args": dict(vars(args)), "geometry": g, "timing": field.timed,
        "univfd_cache": {"images": n, "epochs": E, "uncached_epoch_s": U,
                         "cached_epoch_fixed_s": fixed, "cached_epoch_s_per_image": per_img,
                         "cached_epochs_host_hours_matrix": host_h,
                         "cache_build_s": B, "cached_epochs_s": C, "ratio": ratio,
                         "uncached_epoch_s_full": Uf, "cache_build_s_full": Bf,
                         "ratio_full": ratio_full, "target": CACHE_TARGET},
        "group": {"heads": N_HEADS, "images": b, "shared_s_per_image": sh,
                  "separate_s_per_image": sep, "ratio": group, "shared_s_per_image_full": shf,
                  "separate_s_per_image_full": sepf, "ratio_full": group_full,
                  "agree": agree, "target": GROUP_TARGET},
        "images_per_s": {k: 1 / v for k, v in here.items()},
        "images_per_s_full": {k: 1 / v for k, v in full.items()},
        "layer_seconds": ls, "flops_per_image": fl,
        "matrix": dataclasses.asdict(mx), "mfu": args.mfu, "gpu_hours": hours,
        "gpu_hours_total": total,
        "verdicts": [{"label": lb, "value": v, "ok": ok} for lb, v, ok in verdicts]}
    return out, figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2, help="CLIP layers (full depth: 24)")
    ap.add_argument("--images", type=int, default=64, help="UnivFD training images (1)")
    ap.add_argument("--batch", type=int, default=8, help="images per batch in (2) and (3)")
    ap.add_argument("--epochs", type=int, default=100, help="cached UnivFD epochs")
    ps.common_args(ap)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: tiny widths, 8 images, batch 4, 1 round (figures "
                         "meaningless)")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.batch, args.rounds = 8, 4, 1
    if args.layers < 2 or args.layers > 24:
        ap.error("--layers must be in 2..24 (layer backward is timed on layers >= 1)")
    if args.batch < 2 or args.images < 2 or args.rounds < 1 or args.epochs < 1:
        ap.error("--batch and --images must be >= 2, --rounds and --epochs >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    t_start, timer, log = ps.cpu_setup(args.threads)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg, _ = ps.paper_section()
    with tempfile.TemporaryDirectory(prefix="field_scale") as tmp:
        field = Field(args, Path(tmp), timer)
        log("detectors built")
        flops = field.flops()
        log("FLOPs counted")
        field.run(log)
    agree = float((field.outputs["shared"] - field.outputs["separate"]).abs().max())
    assert agree < 1e-5, f"shared and separate UnivFD passes disagree by {agree:.2e}"
    proj = projections(field, flops)
    baselines = ps.baseline_flops(args.quick)
    mx, hours = gpu_hours(proj, baselines, cfg, args.epochs, args.mfu)
    lines, figures = report(args, field, proj, mx, hours, agree)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    lines.append(f"peak RSS {rss:.2f} GiB; wall {time.perf_counter() - t_start:.0f} s "
                 f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print("\n".join(lines))
    if args.out:
        figures["args"]["out"] = str(args.out)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
