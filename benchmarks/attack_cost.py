"""Benchmark: the cost of the attack axis, one PGD step against one scoring forward per
detector on CPU, and the paper / field attack grid projected to H100 hours.

Builds every white-box detector of the paper config (Bi-LoRA, ResNet50, Xception) and of the
field config (UnivFD, NPR, LoRA on CLIP besides) as ``benchmarks/paper_scale.py`` and
``benchmarks/field_scale.py`` do: at their REAL widths, the BLIP-2 and CLIP towers at
``--layers`` layers (timm and NPR at full depth), random weights, float32, on CPU, and times
(the process's CPU time with one thread, medians of ``--rounds`` interleaved rounds) on one
uint8 batch at each detector's input size:

  (a) one scoring forward, ``predict_proba``;
  (b) one PGD step as ART takes it: ``pixel_margin`` forward and ``torch.autograd.grad`` to
      the pixels;
  (c) one real ART iteration: ``bilora.attacks.white_box.attack_batch`` with a 1-step PGD
      (ART's estimator, the loss, the projection, the uint8 quantisation: the library's
      overhead on top of (b)).

The ratio (b)/(a) is measured at reduced depth: to first order it does not depend on depth
(every layer pays the same forward and backward). The attack grid of a config (the issue's
block on every cell: FGSM and PGD-10 at 1, 2, 4, 8/255, then JPEG 75, transfer) is then
projected to H100 hours as: per attacked cell ``forward_equivalents`` (with the measured
ratio as the cost of a gradient step) x images x the per-image scoring forward that the
paper_scale / field_scale projections use (counted FLOPs at full depth, at ``--mfu`` of the
H100's bf16 peak), plus the transfer cells' scoring; beside the matrix's own projected total
(training + scoring, from the same projections), for each ``--max-images``. The "+ ART" rows
add (c) - (b) forwards per image and attack call (ART predicts the clean and the adversarial
batch once per call to log a success rate); the largest M within ``--budget`` of the paper
matrix with them counted is printed as the chosen default (``evaluation.attacks.max_images``
of paper.yaml, field.yaml and the schema). Usage:

    python benchmarks/attack_cost.py [--layers 2] [--batch 4] [--rounds 3] [--threads 1]
                                     [--mfu 0.4] [--max-images 16 32 64 128 256]
                                     [--budget 0.25] [--no-art] [--quick]
"""

from __future__ import annotations

import argparse
import copy
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
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import field_scale as fs  # noqa: E402
import paper_scale as ps  # noqa: E402  (puts this checkout first and the hub offline)

FIELD_CONFIG = ps.ROOT / "workflow" / "config" / "field.yaml"
EPS = ["1/255", "2/255", "4/255", "8/255"]
PGD_STEPS = 10
#: The issue's attack block (``max_images`` and the transfer sources set per config).
GRID = {"fgsm": {"eps": EPS}, "pgd": {"eps": EPS, "steps": PGD_STEPS}, "then_jpeg": [75]}
SOURCES = {"paper": ["resnet50"], "field": ["resnet50", "univfd"]}
#: Timed detectors: (label, which configs have it).
MODELS = {"bilora": ("Bi-LoRA (BLIP-2 opt-2.7b)", "paper, field"),
          "resnet50": ("ResNet50", "paper, field"),
          "legacy_xception": ("Xception", "paper, field"),
          "univfd": ("UnivFD (CLIP ViT-L/14)", "field"),
          "npr": ("NPR", "field"),
          "clip_lora": ("LoRA on CLIP", "field")}


def model_key(section: dict[str, Any]) -> str:
    """Which timed detector a config section runs as (released weights as the retrained)."""
    return section["model_name"] if section["kind"] == "timm" else section["kind"]


# -- the detectors ----------------------------------------------------------------------------

def timm_detector(section: dict[str, Any], seed: int, quick: bool):
    """A paper config's timm baseline with random weights (64 px with ``quick``)."""
    from baselines.timm_classifier.detector import TimmDetector
    from bilora.config import complete_detector

    sec = {k: v for k, v in section.items() if k != "label"}
    sec = complete_detector({**sec, "pretrained": False,
                             **({"image_size": 64} if quick else {})})
    return TimmDetector.build(sec, seed)


class Timed:
    """One detector, its batch (uint8 at its input size) and the timed paths' seconds."""

    def __init__(self, key: str, det, side: int, batch: int, gen: torch.Generator):
        self.key, self.det, self.side = key, det.eval(), side
        self.images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8,
                                    generator=gen)
        self.labels = torch.arange(batch) % 2
        self.seconds: dict[str, list[float]] = {"forward": [], "pgd_step": [], "art_pgd1": []}

    def forward(self) -> Any:
        return self.det.predict_proba(self.images)

    def pgd_step(self) -> torch.Tensor:
        x = (self.images.float() / 255.0).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.det.pixel_margin(x).sum(), x)
        return grad

    def art_pgd1(self) -> Any:
        from bilora.attacks.white_box import attack_batch

        step = {"attack": "pgd", "eps": 8 / 255, "name": "pgd=8", "steps": 1,
                "step_size": 2 / 255}
        return attack_batch(self.det, self.images, self.labels, [step], len(self.images))

    def median(self, path: str) -> float:
        return statistics.median(self.seconds[path]) / len(self.images)

    def ratio(self, path: str = "pgd_step") -> float:
        return self.median(path) / self.median("forward")


def run_rounds(models: list[Timed], paths: list[str], rounds: int, timer: Callable[[], float],
               log: Callable[[str], None]) -> None:
    """Round 0 warms every path up (untimed); then every (detector, path) once per round,
    the order rotated each round."""
    units = [(m, p) for m in models for p in paths]
    for r in range(rounds + 1):
        for m, p in units[r % len(units):] + units[:r % len(units)]:
            t0 = timer()
            out = getattr(m, p)()
            if r:
                m.seconds[p].append(timer() - t0)
            if p == "pgd_step":
                assert torch.isfinite(out).all() and out.abs().sum() > 0, \
                    f"{m.key}: no gradient reaches the pixels"
        log(f"round {r}/{rounds} done" + (" (warm-up, untimed)" if r == 0 else ""))


# -- the projections ---------------------------------------------------------------------------

def paper_matrix(det, names: list[str], conf, det_cfg: dict[str, Any], cfg: dict[str, Any],
                 args: argparse.Namespace, timer: Callable[[], float],
                 log: Callable[[str], None]) -> tuple[dict[str, float], dict[str, float]]:
    """paper_scale's projection (its FLOP-counting round only): (the paper matrix's H100
    hours, Bi-LoRA's FLOPs per image of the scorer at full depth)."""
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=gen)
    labels = torch.arange(2) % 2
    optimizer = torch.optim.Adam(det.trainable_parameters(), lr=det_cfg["train"]["lr"])
    bench = ps.Bench(det, names, ps.Clock(det, timer), images, labels, optimizer)
    depth = ps.Depth(bench={t: args.layers for t in ("vision", "qformer", "opt")},
                     full=ps.full_depth(det_cfg), cross=bench.clock.cross,
                     cross_frequency=conf.qformer_config.cross_attention_frequency)
    stats, _ = ps.run_rounds(bench, 0, 2, log)
    flops = {k: ps.full_flops(st, depth) for k, st in stats.items()}
    det.model.set_adapter("default")
    baselines = ps.baseline_flops(args.quick)
    return ps.Matrix.from_config(cfg).hours(flops, baselines, args.mfu), flops["b"]


def forward_seconds(bilora_b: dict[str, float], field_fl: dict[str, float],
                    baselines: dict[str, dict[str, float]], mfu: float) -> dict[str, float]:
    """H100 seconds of one scoring forward per image of each timed detector, as the
    paper_scale / field_scale projections charge it (counted FLOPs at full depth)."""
    def sec(flop: float) -> float:
        return ps.gpu_seconds({"vision": flop, "qformer": 0.0, "rest": 0.0}, mfu)
    return {"bilora": ps.gpu_seconds(bilora_b, mfu),
            "resnet50": sec(baselines["resnet50"]["forward"]),
            "legacy_xception": sec(baselines["legacy_xception"]["forward"]),
            "univfd": sec(field_fl["tower_fwd"] + field_fl["head_fwd"]),
            "npr": sec(field_fl["npr_score"]),
            "clip_lora": sec(field_fl["clip_lora_score"])}


def with_attacks(cfg: dict[str, Any], run: str, max_images: int) -> dict[str, Any]:
    """``cfg`` with the issue's attack block (``max_images``) in ``evaluation.attacks``."""
    out = copy.deepcopy(cfg)
    out["evaluation"]["attacks"] = {**copy.deepcopy(GRID), "max_images": max_images,
                                    "transfer": {"sources": SOURCES[run]}}
    return out


def grid_hours(cfg: dict[str, Any], ratio: dict[str, float], fwd_s: dict[str, float],
               per_call: dict[str, float] | None = None) -> dict[str, float]:
    """H100 hours of the attack grid per detector of ``cfg``: its attacked cells (each
    gradient step at the measured ratio of forwards, plus ``per_call`` forwards per image
    for each attack call: ART's own) and its transfer cells."""
    from bilora import config as C
    from bilora.attacks import plan

    dets = C.detectors(cfg)
    calls = len(plan.grid(plan.block(cfg)))
    hours = {d: 0.0 for d in dets}
    for cell in plan.attacked_cells(cfg):
        key = model_key(dets[cell.detector])
        n, fe = plan.forward_equivalents(cfg, ratio[key], white_box=True)
        fe += calls * (per_call or {}).get(key, 0.0)
        hours[cell.detector] += n * fe * fwd_s[key] / 3600
    for cell in plan.transfer_cells(cfg):
        n, fe = plan.forward_equivalents(cfg, white_box=False)
        hours[cell.detector] += n * fe * fwd_s[model_key(dets[cell.detector])] / 3600
    return hours


def projection(name: str, cfg: dict[str, Any], run: str, matrix_h: float,
               ratio: dict[str, float], per_call: dict[str, float] | None,
               fwd_s: dict[str, float], args: argparse.Namespace
               ) -> tuple[list[str], int | None]:
    """The printed table of one config over ``--max-images`` and the largest M within the
    budget (None: none of them): with ART's measured overhead per attack call where
    ``per_call`` is given (the harness as it runs), else by ``forward_equivalents`` alone."""
    from bilora import config as C
    from bilora.attacks import plan

    out: list[str] = []
    p = out.append
    one = with_attacks(cfg, run, args.max_images[0])
    attacked = plan.attacked_cells(one)
    transfer = plan.transfer_cells(one)
    n1 = plan.forward_equivalents(one)[0]
    scored = plan.forward_equivalents(one, white_box=False)[1]
    steps = plan.grid(one["evaluation"]["attacks"])
    p(f"{name}: {len(attacked)} attacked cells, {len(transfer)} transfer cells (sources "
      f"{', '.join(SOURCES[run])}); per attacked cell and image: "
      f"{sum(s['steps'] for s in steps)} gradient steps (FGSM x4 + PGD-{PGD_STEPS} x4) x the "
      f"ratio + {int(scored // len(SOURCES[run]))} scorings ((8 conditions + clean) x (1 + "
      f"JPEG 75)); images per cell job: M x {n1 // args.max_images[0]} test sets")
    per_m = {m: grid_hours(with_attacks(cfg, run, m), ratio, fwd_s) for m in args.max_images}
    dets = C.detectors(cfg)
    p(f"  {'detector':<18}{'cells':>6}{'ratio':>7}{'fwd ms':>8}"
      + "".join(f"{'M=' + str(m):>9}" for m in args.max_images))
    for d in dets:
        key = model_key(dets[d])
        n = sum(c.detector == d for c in attacked)
        p(f"  {d:<18}{n:>6}{ratio[key]:>7.2f}{1e3 * fwd_s[key]:>8.3f}"
          + "".join(f"{per_m[m][d]:>9.2f}" for m in args.max_images))
    rows = {"attack grid, H100 h": {m: sum(h.values()) for m, h in per_m.items()}}
    if per_call is not None:
        rows[f"+ ART's {len(steps)} calls, H100 h"] = {
            m: sum(grid_hours(with_attacks(cfg, run, m), ratio, fwd_s, per_call).values())
            for m in args.max_images}
    for label, total in rows.items():
        p(f"  {label:<39}" + "".join(f"{total[m]:>9.2f}" for m in args.max_images))
    p(f"  {'matrix, H100 h':<39}" + "".join(f"{matrix_h:>9.2f}" for _ in args.max_images))
    for label, total in rows.items():
        p(f"  {label.split(',')[0] + ' / matrix':<39}"
          + "".join(f"{total[m] / matrix_h:>9.3f}" for m in args.max_images))
    best = None
    for label, total in rows.items():
        fits = [m for m in args.max_images if total[m] <= args.budget * matrix_h]
        best = max(fits) if fits else None
        p(f"  largest M adding <= {100 * args.budget:.0f} % to the matrix "
          f"({label.split(',')[0]}): {best if best is not None else 'none of those listed'}")
    return out, best


# -- the report -------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2, help="BLIP-2 / CLIP layers per tower")
    ap.add_argument("--batch", type=int, default=4, help="images per timed batch")
    ps.common_args(ap)
    ap.add_argument("--max-images", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                    help="evaluation.attacks.max_images values projected")
    ap.add_argument("--budget", type=float, default=0.25,
                    help="the most the attack grid may add to the matrix's GPU time")
    ap.add_argument("--no-art", action="store_true", help="skip the ART 1-step PGD timing")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: tiny widths, 64 px timm, batch 2, 1 round (figures "
                         "meaningless)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.rounds = 2, 1
    if args.layers < 2 or args.batch < 2 or args.rounds < 1:
        ap.error("--layers and --batch must be >= 2, --rounds >= 1")
    args.max_images = sorted(set(args.max_images))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
    t_start, timer, log = ps.cpu_setup(args.threads)
    from transformers.utils import logging as hf_logging

    from bilora import config as C

    hf_logging.disable_progress_bar()
    gen = torch.Generator().manual_seed(args.seed)
    cfg, det_cfg = ps.paper_section()
    field_cfg = C.load(FIELD_CONFIG)
    conf = ps.bench_config(det_cfg, args.layers, args.quick)
    bilora, names = ps.build_detector(det_cfg, conf, args.seed)
    fargs = argparse.Namespace(layers=args.layers, quick=args.quick, epochs=100, seed=args.seed,
                               images=args.batch, batch=args.batch, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="attack_cost") as tmp:
        field = fs.Field(fargs, Path(tmp), timer)
        dets = {"bilora": (bilora, conf.vision_config.image_size),
                "resnet50": timm_detector(cfg["detectors"]["resnet50"], args.seed, args.quick),
                "legacy_xception": timm_detector(cfg["detectors"]["xception"], args.seed,
                                                 args.quick),
                "univfd": (field.univfd, field.univfd.input_size),
                "npr": (field.npr, field.npr.input_size),
                "clip_lora": (field.lora, field.lora.input_size)}
        dets = {k: v if isinstance(v, tuple) else (v, v.input_size) for k, v in dets.items()}
        models = [Timed(k, d, side, args.batch, gen) for k, (d, side) in dets.items()]
        log("detectors built")
        paths = ["forward", "pgd_step"] + ([] if args.no_art else ["art_pgd1"])
        run_rounds(models, paths, args.rounds, timer, log)
        # the projections' FLOP counts, after the timing (their hooks stay on the models)
        field_fl = fs.full_depth_flops(field.flops(), args.layers)
        log("field FLOPs counted")
        paper_h, bilora_b = paper_matrix(bilora, names, conf, det_cfg, cfg, args, timer, log)
        log("paper FLOPs counted")
    baselines = ps.baseline_flops(args.quick)
    field_mx, field_hours = fs.gpu_hours({"flops_full": field_fl}, baselines, cfg, fargs.epochs,
                                         args.mfu)
    field_h = sum(h["total"] for h in field_hours.values())
    fwd_s = forward_seconds(bilora_b, field_fl, baselines, args.mfu)
    ratio = {m.key: m.ratio() for m in models}

    lines: list[str] = []
    p = lines.append
    timed = "process CPU seconds" if args.threads == 1 else "wall seconds"
    p("== The attack axis: one PGD step vs one scoring forward on CPU, the attack grid "
      "projected to an H100 ==")
    p(f"detectors at real widths, random weights, float32, {args.threads} thread(s), batch "
      f"{args.batch} at each input size: BLIP-2 opt-2.7b and CLIP ViT-L/14 at {args.layers} "
      "layers per tower (paper_scale / field_scale builders), timm ResNet50 / Xception and "
      "NPR at full depth" + ("   [--quick: TINY widths, figures meaningless]"
                             if args.quick else ""))
    p(f"timing: {timed}, median of {args.rounds} interleaved rounds after an untimed warm-up")
    p("")
    p(f"{'detector':<28}{'px':>5}{'fwd ms/img':>11}{'PGD step':>10}{'ART PGD-1':>11}"
      f"{'PGD/fwd':>9}{'ART/fwd':>9}  configs")
    for m in models:
        label, where = MODELS[m.key]
        art = (f"{1e3 * m.median('art_pgd1'):>11.1f}" if not args.no_art else f"{'-':>11}")
        art_r = f"{m.ratio('art_pgd1'):>9.2f}" if not args.no_art else f"{'-':>9}"
        p(f"{label:<28}{m.side:>5}{1e3 * m.median('forward'):>11.1f}"
          f"{1e3 * m.median('pgd_step'):>10.1f}{art}{m.ratio():>9.2f}{art_r}  {where}")
    p("(PGD step: pixel_margin forward + torch.autograd.grad to the pixels, what ART runs per "
      "iteration; ART PGD-1: attack_batch with one PGD iteration, estimator, projection and "
      "uint8 quantisation included. The ratios are at the reduced depth above; every layer "
      "pays its forward and backward alike, so to first order they hold at full depth)")
    p("")
    p(f"H100 projection: counted FLOPs of one scoring forward per image at full depth (the "
      f"paper_scale / field_scale projections) at {100 * args.mfu:.0f} % of "
      f"{ps.H100['bf16'] / 1e12:.0f} TFLOP/s bf16 (Bi-LoRA's Q-Former float32 at "
      f"{100 * args.mfu:.0f} % of {ps.H100['fp32'] / 1e12:.0f}); a gradient step costs the "
      "measured PGD/fwd ratio of forwards (bilora.attacks.plan.forward_equivalents); the "
      "'+ ART' rows add ART's measured fixed cost per attack call; image loading, PNG "
      "writing and JPEG not counted")
    p(f"attack block on every cell: fgsm eps {', '.join(EPS)}; pgd eps {', '.join(EPS)}, "
      f"{PGD_STEPS} steps; then_jpeg [75]; transfer sources per config; max_images M")
    p("")
    per_call = None if args.no_art else {m.key: max(0.0, m.ratio("art_pgd1") - m.ratio())
                                         for m in models}
    paper_lines, chosen = projection(
        f"paper config ({len(C.cells(cfg))} cells)", cfg, "paper", paper_h["now"], ratio,
        per_call, fwd_s, args)
    lines += paper_lines
    p(f"  (matrix: paper_scale's projection, {paper_h['now']:.2f} H100 h = Bi-LoRA training "
      f"{paper_h['train_now']:.2f} + Bi-LoRA scoring {paper_h['score_now']:.2f} + 14 "
      f"baseline cells {paper_h['baselines']:.2f}; the authors' adapters' scoring not in it)")
    p("")
    field_lines, _ = projection(
        f"field config ({len(C.cells(field_cfg))} cells)", field_cfg, "field", field_h, ratio,
        per_call, fwd_s, args)
    lines += field_lines
    p(f"  (matrix: field_scale's {field_mx.cells}-generator matrix, {field_h:.2f} h; its "
      "Bi-LoRA row is the measured H200 rate of benchmarks/results/gpu_check_h200.json)")
    p("")
    if per_call is not None:
        p("ART's overhead per attack call (ART PGD-1 / fwd minus PGD step / fwd), forwards per "
          "image: " + ", ".join(f"{MODELS[k][0].split(' (')[0]} {v:.2f}"
                                for k, v in per_call.items())
          + "; ART's FGSM and PGD each predict the clean and the adversarial batch once per "
          "call to log a success rate (art.utils.compute_success): about 2 forwards")
    p("the paper grid and the paper matrix are both counted FLOPs at one MFU: their ratio, "
      "and so the chosen M, do not depend on the MFU assumed")
    p("")
    how = "forward_equivalents alone" if per_call is None else "ART's overhead counted"
    p(f"chosen default max_images (paper config, {how}, <= {100 * args.budget:.0f} % of its "
      f"matrix): {chosen}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    p(f"peak RSS {rss:.2f} GiB; wall {time.perf_counter() - t_start:.0f} s "
      f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
