"""GPU check: the harness's CUDA / bfloat16 paths of Bi-LoRA at paper scale, and their speed.

Builds BLIP-2 opt-2.7b from the shipped architecture at its real widths (full depth by
default: 39 ViT, 12 Q-Former, 32 OPT layers), random weights re-initialised so that the image
moves the logits (``benchmarks/paper_scale.py``), on the device in ``--dtype`` (the Q-Former
and query tokens float32 as transformers loads them, the LoRA weights float32 as PEFT keeps
them), sdpa attention, the paper's LoRA (r16/alpha32 on q_proj/k_proj) plus 7 adapters with
random weights, and

1. checks, on random uint8 images: the greedy token of ``predict_tokens`` equals the token
   ``generate`` produces (>= 95 % of images: bfloat16 ties may flip) and ``generate_labels``
   maps it alike; P(fake) finite and in [0, 1]; the loss from cached last-stage features
   (built in other batches, through the CPU, as the feature cache does) equals ``loss``;
   7 adapters scored from one shared image pass equal 7 separate passes;
2. times (synchronised wall clock, medians after warm-up) the preprocessing (the image
   processor on the CPU and the copy to the device, part of every path from images), the
   scorer, the authors' batch-1 ``generate`` readout, uncached and cached training steps
   (loss + backward + Adam), the cache build, and 7 adapters shared against separate;
   measures the peak GPU memory of a training step against ``training_memory``'s
   prediction;
3. projects the paper's matrix to GPU-hours on this GPU from the measured images/s.

Prints readable lines and writes them as JSON to ``--out`` (default ``$OUT/gpu_check.json``);
exits 1 when a check fails (after writing). Usage on a GPU, and a CPU smoke test:

    PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py [--layers N] [--batch 32]
    python benchmarks/gpu_check.py --device cpu --layers 2 --batch 2 --quick --out tmp.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
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

TOKEN_AGREEMENT = 0.95
GIB = 2**30


# -- set-up -----------------------------------------------------------------------------------

def load_paper() -> tuple[dict[str, Any], dict[str, Any], str]:
    """(the paper config, its ``detectors.bilora`` section, how it was read): validated by
    the harness, or the raw YAML where jsonschema is not installed (every field used here is
    stated in the file)."""
    try:
        cfg, det_cfg = ps.paper_section()
        return cfg, det_cfg, "bilora.config.load"
    except ImportError as err:
        import yaml

        cfg = yaml.safe_load(ps.PAPER_CONFIG.read_text())
        return cfg, cfg["detectors"]["bilora"], f"raw YAML ({err})"


class Plain:
    """The clock ``paper_scale.Bench`` calls around backward and the optimiser step, without
    per-layer hooks (on the GPU they would time nothing but the launches)."""

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, warmup: int, rounds: int) -> list[float]:
    """Wall seconds of ``rounds`` calls of ``fn`` after ``warmup`` untimed ones, each
    synchronised with the device."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def memory_prediction(det_cfg: dict[str, Any], conf, dtype: str, batch: int
                      ) -> dict[str, float] | None:
    """``training_memory`` of the section for the built architecture ``conf`` (written to a
    temporary checkpoint folder the base reads its config from), ``dtype`` and ``batch``."""
    from bilora.bases.blip2.memory import training_memory

    with tempfile.TemporaryDirectory() as tmp:
        conf.save_pretrained(tmp)
        section = {**det_cfg, "dtype": dtype,
                   "base_model": {**det_cfg["base_model"], "source": "pretrained",
                                  "name_or_path": tmp},
                   "train": {**det_cfg["train"], "batch_size": batch}}
        return training_memory(section, batch_size=batch)


# -- 1. correctness ----------------------------------------------------------------------------

def check_tokens(det, images: torch.Tensor, adapter: str) -> dict[str, Any]:
    """``predict_tokens``' greedy token against ``generate``'s, and ``generate_labels``
    against the labels of the scorer's token, with ``adapter`` active."""
    det.model.set_adapter(adapter)
    det.eval()
    last = det.vlm.stages[-1]
    with torch.no_grad():
        p_fake, token = det.predict_tokens(images)
        logits = det.vlm.answer_logits(det.features(images, last)).float()
    generated = det.vlm.generate_token(images).cpu()
    labels = det.generate_labels(images)
    det.model.set_adapter("default")
    token, p_fake = token.cpu(), p_fake.float().cpu()
    mapped = torch.full_like(token, -1)
    mapped[token == det.word_ids[0]] = 0
    mapped[token == det.word_ids[1]] = 1
    top2 = logits.topk(2, -1).values.cpu()
    differ = (token != generated).nonzero().flatten().tolist()
    agree = len(token) - len(differ)
    return {"adapter": adapter, "images": len(token), "agree": agree,
            "fraction": agree / len(token), "labels_agree": int((mapped == labels).sum()),
            "top2_gap_where_differ": [float(top2[i, 0] - top2[i, 1]) for i in differ],
            "median_top2_gap": float((top2[:, 0] - top2[:, 1]).median()),
            "p_fake_ok": bool(torch.isfinite(p_fake).all() and (p_fake >= 0).all()
                              and (p_fake <= 1).all()),
            "ok": agree / len(token) >= TOKEN_AGREEMENT}


def check_cached_loss(det, images: torch.Tensor, labels: torch.Tensor, chunk: int,
                      tol: float) -> dict[str, Any]:
    """``loss(images)`` against the loss from last-stage features built ``chunk`` images at
    a time and kept on the CPU (as the feature cache keeps them), in eval mode."""
    det.eval()
    last = det.vlm.stages[-1]
    with torch.no_grad():
        direct = float(det.loss(images, labels))
        x = torch.cat([det.features(images[i:i + chunk], last).cpu()
                       for i in range(0, len(images), chunk)])
        cached = float(det.loss_from_features(x, labels, last))
    diff = abs(direct - cached)
    return {"loss": direct, "cached": cached, "abs_diff": diff, "chunk": chunk,
            "tolerance": tol * max(1.0, abs(direct)),
            "ok": math.isfinite(direct) and diff <= tol * max(1.0, abs(direct))}


# -- 3. projection -----------------------------------------------------------------------------

def project(mx: ps.Matrix, ips: dict[str, float]) -> dict[str, float]:
    """GPU-hours of the paper's matrix on this GPU from the measured images/s (data loading
    and the baselines not counted)."""
    scored = mx.test_images * mx.conditions
    n = ps.N_ADAPTERS
    h = {"train_uncached": mx.cells * mx.epochs * mx.train_images / ips["train_uncached"],
         "train_cached": mx.cells * mx.train_images * (1 / ips["cache_build"]
                                                      + mx.epochs / ips["train_cached"]),
         "score_per_cell": mx.cells * scored / ips["scorer"],
         "score_group": mx.cells / n * scored / ips["group_shared"],
         "score_authors_generate_b1": mx.cells * scored / ips["generate_b1"]}
    h = {k: v / 3600 for k, v in h.items()}
    h["total_uncached_per_cell"] = h["train_uncached"] + h["score_per_cell"]
    h["total_cached_group"] = h["train_cached"] + h["score_group"]
    return h


# -- the run -----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                    help="the base's dtype (default: bfloat16 on CUDA, else float32)")
    ap.add_argument("--layers", type=int, help="layers per tower (default: full depth)")
    ap.add_argument("--batch", type=int, default=32, help="images per batch")
    ap.add_argument("--b1-images", type=int, default=8,
                    help="images of the batch-1 generate readout per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (median)")
    ap.add_argument("--threads", type=int, help="torch threads (default: 1 on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON path (default: $OUT/gpu_check.json, else ./)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: tiny widths, 1 warm-up and 1 round (figures meaningless)")
    args = ap.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.quick:
        args.warmup, args.rounds = 1, 1
    if args.batch < 2 or args.rounds < 1 or (args.layers is not None and args.layers < 1):
        ap.error("--batch must be >= 2, --rounds >= 1 and --layers >= 1")
    args.out = Path(args.out or Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    t_start = time.perf_counter()
    t_section = [t_start]
    if args.threads or not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads or 1)
    cuda = args.device.startswith("cuda")

    def log(msg: str) -> None:
        now = time.perf_counter()
        print(f"[{now - t_start:6.1f} s, section {now - t_section[0]:5.1f} s] {msg}", flush=True)
        t_section[0] = now

    def say(msg: str = "") -> None:
        print(msg, flush=True)

    cfg, det_cfg, read = load_paper()
    full = ps.full_depth(det_cfg)
    layers = args.layers or max(full.values())
    conf = ps.bench_config(det_cfg, layers, args.quick)
    if args.layers is None:  # full depth: each tower its own
        conf.vision_config.num_hidden_layers = full["vision"]
        conf.qformer_config.num_hidden_layers = full["qformer"]
        conf.text_config.num_hidden_layers = full["opt"]
    conf._attn_implementation = det_cfg["attn_implementation"]
    depth = {"vision": conf.vision_config.num_hidden_layers,
             "qformer": conf.qformer_config.num_hidden_layers,
             "opt": conf.text_config.num_hidden_layers}
    out: dict[str, Any] = {
        "device": args.device, "device_name": (torch.cuda.get_device_name(args.device)
                                               if cuda else "cpu"),
        "torch": torch.__version__, "dtype": args.dtype, "depth": depth,
        "full_depth": depth == full, "quick": args.quick, "batch": args.batch,
        "widths": {"vision": conf.vision_config.hidden_size,
                   "qformer": conf.qformer_config.hidden_size,
                   "opt": conf.text_config.hidden_size, "vocab": conf.text_config.vocab_size},
        "config_read_by": read, "rounds": args.rounds, "warmup": args.warmup}
    say("== Bi-LoRA GPU check: the harness's paths at paper scale ==")
    say(f"{out['device_name']} ({args.device}), torch {torch.__version__}, {args.dtype}; "
        f"depth {depth['vision']} ViT / {depth['qformer']} Q-Former / {depth['opt']} OPT "
        f"(full: {full['vision']} / {full['qformer']} / {full['opt']}); widths "
        f"{out['widths']}" + ("   [--quick: TINY widths, figures meaningless]"
                              if args.quick else ""))

    det, names = ps.build_detector(det_cfg, conf, args.seed, args.device, args.dtype)
    base = det.model.get_base_model()
    attn = base.language_model.config._attn_implementation
    lora_dtypes = sorted({str(p.dtype) for n, p in det.model.named_parameters()
                          if "lora_" in n})
    qformer_dtype = str(next(base.qformer.parameters()).dtype)
    params = sum(p.numel() for p in base.parameters())
    out["model"] = {"parameters": params, "attention": attn, "lora_dtypes": lora_dtypes,
                    "qformer_dtype": qformer_dtype,
                    "vision_dtype": str(next(base.vision_model.parameters()).dtype)}
    if cuda:
        out["model"]["allocated_gib"] = torch.cuda.memory_allocated(args.device) / GIB
    log(f"model built: {params / 1e9:.2f} B parameters, attention {attn}, Q-Former "
        f"{qformer_dtype}, LoRA {', '.join(lora_dtypes)}, {len(names)} extra adapters")

    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (args.batch, 3, 256, 256), dtype=torch.uint8, generator=gen)
    labels = torch.arange(args.batch) % 2
    optimizer = torch.optim.Adam(det.trainable_parameters(), lr=det_cfg["train"]["lr"])
    bench = ps.Bench(det, names, Plain(), images, labels, optimizer)

    # 1. correctness
    half = args.dtype != "float32"
    checks: dict[str, Any] = {}
    effect = ps.image_effect(det, images)
    checks["image_effect"] = {"value": effect, "ok": effect > 1e-2}
    checks["tokens"] = [check_tokens(det, images, a) for a in ("default", names[0])]
    checks["p_fake_ok"] = {"ok": all(t["p_fake_ok"] for t in checks["tokens"])}
    checks["cached_loss"] = check_cached_loss(det, images, labels, max(1, args.batch // 4),
                                              2e-2 if half else 1e-4)
    shared, separate = bench.group_shared(), bench.group_separate()
    diff = float((shared.float() - separate.float()).abs().max())
    checks["adapters_shared_vs_separate"] = {"max_abs_diff_p_fake": diff,
                                             "tolerance": 2e-2 if half else 1e-4,
                                             "ok": diff <= (2e-2 if half else 1e-4)}
    out["checks"] = checks
    passed = all(c["ok"] for c in (checks["image_effect"], *checks["tokens"],
                                   checks["p_fake_ok"], checks["cached_loss"],
                                   checks["adapters_shared_vs_separate"]))
    out["passed"] = passed
    log("correctness checked")
    say(f"  image moves the logits by {effect:.2f} of their std")
    for t in checks["tokens"]:
        say(f"  adapter {t['adapter']}: scorer's greedy token == generate's on {t['agree']}/"
            f"{t['images']} images, generate_labels agree on {t['labels_agree']}; median "
            f"top-2 logit gap {t['median_top2_gap']:.3g}, where they differ "
            f"{[round(g, 4) for g in t['top2_gap_where_differ']]}")
    c = checks["cached_loss"]
    say(f"  P(fake) finite in [0, 1]: {checks['p_fake_ok']['ok']}; loss {c['loss']:.5g}, from "
        f"cached features (chunks of {c['chunk']}) {c['cached']:.5g}, |diff| "
        f"{c['abs_diff']:.2e} (tol {c['tolerance']:.1e})")
    say(f"  7 adapters, shared pass vs separate passes: max |P(fake) diff| {diff:.2e}")
    say(f"  {'PASS' if passed else 'FAIL'}: correctness")

    # 2. speed
    n1 = min(args.b1_images, args.batch)

    def generate_b1() -> None:
        with bench.first(n1):
            bench.generate_b1()
    paths = {"preprocess": (lambda: det.vlm.pixel_values(images), args.batch),
             "scorer": (bench.scorer, args.batch), "generate_b1": (generate_b1, n1),
             "train_uncached": (bench.train_uncached, args.batch),
             "cache_build": (bench.cache_build, args.batch),
             "train_cached": (bench.train_cached, args.batch),
             "group_shared": (bench.group_shared, args.batch),
             "group_separate": (bench.group_separate, args.batch)}

    speed: dict[str, Any] = {}
    for name, (fn, n) in paths.items():
        secs = timed(fn, args.device, args.warmup, args.rounds)
        med = statistics.median(secs)
        speed[name] = {"images": n, "seconds": secs, "images_per_s": n / med}
        log(f"{name:<15}{n / med:10.2f} images/s ({1e3 * med / n:8.2f} ms/image, batch "
            f"{1 if name == 'generate_b1' else n})")
    ips = {k: v["images_per_s"] for k, v in speed.items()}
    ratios = {"scorer_over_generate_b1": ips["scorer"] / ips["generate_b1"],
              "cached_over_uncached_step": ips["train_cached"] / ips["train_uncached"],
              "group_shared_over_separate": ips["group_shared"] / ips["group_separate"]}
    ep = det_cfg["train"]["epochs"]
    ratios["cached_epochs_incl_build_over_uncached"] = (
        (1 / ips["cache_build"] + ep / ips["train_cached"]) / (ep / ips["train_uncached"]))
    out["speed"], out["ratios"] = speed, ratios
    say(f"  scorer / batch-1 generate {ratios['scorer_over_generate_b1']:.2f}x; cached / "
        f"uncached step {ratios['cached_over_uncached_step']:.2f}x; {ep} cached epochs incl. "
        f"the build / {ep} uncached {ratios['cached_epochs_incl_build_over_uncached']:.2f}; "
        f"7 adapters shared / separate {ratios['group_shared_over_separate']:.2f}x")

    # memory
    pred = memory_prediction(det_cfg, conf, args.dtype, args.batch)
    mem: dict[str, Any] = {"predicted": pred}
    extra = sum(p.numel() * p.element_size() for n, p in det.model.named_parameters()
                if "lora_" in n and any(f".{c}." in n for c in names))
    mem["extra_adapters_bytes"] = extra
    if cuda:
        for name, fn in (("uncached", bench.train_uncached), ("cached", bench.train_cached)):
            sync(args.device)
            torch.cuda.reset_peak_memory_stats(args.device)
            fn()
            sync(args.device)
            mem[f"peak_{name}"] = torch.cuda.max_memory_allocated(args.device)
            mem[f"reserved_{name}"] = torch.cuda.max_memory_reserved(args.device)
    out["memory"] = mem
    if cuda and pred:
        for name in ("uncached", "cached"):
            expect = pred[name] - pred["overhead"]
            mem[f"measured_over_predicted_{name}"] = mem[f"peak_{name}"] / expect
            peak, reserved = mem[f"peak_{name}"] / GIB, mem[f"reserved_{name}"] / GIB
            say(f"  peak GPU memory, {name} step at batch {args.batch}: measured {peak:.2f} "
                f"GiB allocated ({reserved:.2f} reserved) vs predicted {expect / GIB:.2f} GiB "
                f"without the {pred['overhead'] / GIB:.0f} GiB CUDA context "
                f"({pred[name] / GIB:.2f} with): {mem[f'measured_over_predicted_{name}']:.2f}x")
        say(f"  (measured includes the {len(names)} extra adapters, {extra / GIB:.3f} GiB, not "
            "in the prediction)")
    elif pred:
        say(f"  peak GPU memory: not measured on {args.device}; predicted for batch "
            f"{args.batch}, {args.dtype}: {pred['uncached'] / GIB:.2f} GiB uncached, "
            f"{pred['cached'] / GIB:.2f} GiB cached (with the {pred['overhead'] / GIB:.0f} GiB "
            "CUDA context)")
    log("speed and memory measured")

    # 3. projection
    mx = ps.Matrix.from_config(cfg)
    hours = project(mx, ips)
    out["matrix"] = vars(mx)
    out["gpu_hours"] = hours
    say(f"paper matrix on this GPU ({out['device_name']}, {args.dtype}"
        + ("" if out["full_depth"] else f", AT {depth} LAYERS, NOT FULL DEPTH") + "): "
        f"{mx.cells} training generators x {mx.train_images:,} images x {mx.epochs} epochs; "
        f"{mx.cells} cells x {mx.test_images:,} test images x {mx.conditions} conditions "
        "(data loading and the baselines not counted)")
    rows = [("training, uncached", "train_uncached"),
            ("training, cached (incl. the cache build)", "train_cached"),
            ("scoring, each cell its own pass", "score_per_cell"),
            (f"scoring, {ps.N_ADAPTERS} adapters per shared pass", "score_group"),
            ("scoring, the authors' batch-1 generate", "score_authors_generate_b1"),
            ("total, uncached + per cell", "total_uncached_per_cell"),
            ("total, cached + shared", "total_cached_group")]
    for label, key in rows:
        say(f"  {label:<46}{hours[key]:>10.2f} GPU-hours")

    out["elapsed_s"] = time.perf_counter() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str))
    log(f"wrote {args.out}; {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
