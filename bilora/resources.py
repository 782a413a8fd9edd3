"""What each job asks the scheduler for, derived from the config's scale.

``rule_resources(cfg, rule, wildcards, attempt)`` gives ``mem_mb`` (host memory),
``runtime`` (minutes) and ``gpu`` (a count) for one job. The same names drive
``--resources gpu=N`` on one machine and ``--mem``, ``-t`` and ``--gpus`` on SLURM.

The estimates are deliberately coarse and on the safe side: work is counted in
FLOPs (from the model's widths and depths, the image size, the image counts and
the epochs) and in decoded pixels, at throughputs this project measured or that
are conservative for current hardware (below), times a safety factor. Counts a
config does not state are assumptions: Ricker et al.'s test split (10k fakes per
generator) and, for ``source: local`` folders, a GenImage-sized subset. Scale every
runtime with ``resources.runtime_scale``; cap it at the cluster's limit with
``resources.max_runtime`` (a job cut by its limit resumes from its last epoch
checkpoint on ``--retries``). A job's runtime and memory grow with Snakemake's
``attempt``. No torch import: this runs when the DAG is built.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

from bilora import config as C

# run a model: a GPU when the config wants one
MODEL_RULES = ("train_detector", "score_cell", "score_group", "attack_cell", "transfer_cell")
DATA_RULES = ("make_procedural_dataset", "fetch_zenodo_record", "extract_archives",
              "rebuild_lsun_real", "check_split_digest", "organize_dataset")
OTHER_RULES = ("build_base_model", "import_checkpoint", "prefetch_models", "gather_scores",
               "collect_warnings", "compute_metrics", "render_report", "render_attack_report")
RULES = MODEL_RULES + DATA_RULES + OTHER_RULES
WILDCARDS = {"train_detector": ("detector", "generator"), "score_cell": ("detector",),
             "attack_cell": ("detector",), "transfer_cell": ("detector",),
             "score_group": ("group",), "check_split_digest": ("dataset", "split"),
             **{r: ("dataset",) for r in DATA_RULES if r != "check_split_digest"}}
LM_SHARE = 0.25  # the decoder's share of a Bi-LoRA scoring pass (0.18 of 0.71 TFLOP/image)
# the datasets a data rule can run for (sizing a rule without its wildcards)
SOURCES = {"make_procedural_dataset": ("procedural",), "organize_dataset": ("zenodo", "local"),
           **{r: ("zenodo",) for r in ("fetch_zenodo_record", "extract_archives",
                                       "rebuild_lsun_real", "check_split_digest")}}

# Throughputs (FLOP/s actually achieved, per job): GPU bf16/fp16 and fp32 are conservative
# for an A100-class card at small batches; CPU per thread is ~1/3 of the 130-140 GFLOP/s
# measured here for BLIP-2's matmuls (small convolutions run slower).
GPU_FLOPS = {"bfloat16": 40e12, "float16": 40e12, "float32": 10e12}
INFERENCE_SPEEDUP = 2.0           # scoring: no backward pass, larger batches
CPU_FLOPS_PER_THREAD = 40e9
DECODE_S_PER_PIXEL = 40e-9        # PNG/JPEG decode + resize, one worker (256 px: ~2.6 ms)
DOWNLOAD_BYTES_PER_S = 10e6
DISK_BYTES_PER_S = 100e6
SAFETY = 1.5                      # every compute estimate is multiplied by this
STARTUP_MIN = 3                   # Snakemake in the job + Python imports + model load floor
MIN_RUNTIME = 10                  # minutes; SLURM counts in minutes
BASE_MB = 1536                    # Python + torch (+ transformers) resident set
WORKER_MB = 512                   # one DataLoader worker process
PNG_BYTES_PER_PIXEL = 1.5         # compressed RGB, natural images

# dataset counts a config does not state
RICKER_TEST_FAKES = 10_000        # per generator (and one shared real set of the same size)
LOCAL_IMAGES = {"train": 324_000, "test": 12_000, "size": 512}   # a GenImage subset


def gpus_per_model_job(cfg: Mapping[str, Any]) -> int:
    """``resources.gpus_per_model_job``, or 1 when ``device: cuda`` and 0 otherwise."""
    n = cfg["resources"]["gpus_per_model_job"]
    return int(n) if n is not None else int(cfg["device"] == "cuda")


def rule_resources(cfg: Mapping[str, Any], rule: str, wildcards: Any = None,
                   attempt: int = 1) -> dict[str, int]:
    """``mem_mb``, ``runtime`` (minutes) and ``gpu`` of one job of ``rule``.

    Without ``wildcards`` (or with some missing) the largest job of the rule is sized.
    """
    if rule not in RULES:
        raise ValueError(f"bilora.resources: no sizing for rule {rule!r}; "
                         f"known: {', '.join(RULES)}")
    datasets = [n for n, d in cfg["data"]["datasets"].items()
                if d["source"] in SOURCES.get(rule, (d["source"],))]
    trains = rule == "train_detector"  # imported detectors have no training job to size
    candidates = {"detector": [d for d, s in C.detectors(cfg).items()
                               if not (trains and C.imported(s))],
                  "group": list(C.sharing_groups(cfg)),
                  "generator": list(cfg["generators"]["train"]),
                  "dataset": datasets, "split": ["train", "val", "test"]}
    names = WILDCARDS.get(rule, ())
    given = [_wildcard(wildcards, n) for n in names]
    choices = [[g] if g else candidates[n] for g, n in zip(given, names, strict=True)]
    sized = [_estimate(cfg, rule, dict(zip(names, combo, strict=True)))
             for combo in itertools.product(*choices)] or [(STARTUP_MIN, BASE_MB)]
    minutes = max(s[0] for s in sized) * _runtime_scale(cfg)
    mem = max(s[1] for s in sized)
    gpu = gpus_per_model_job(cfg) if rule in MODEL_RULES else 0
    runtime = max(MIN_RUNTIME, _round_up(minutes, 5)) * attempt
    cap = cfg["resources"]["max_runtime"]
    if cap:
        runtime = min(runtime, int(cap))
    mem_mb = _round_up(mem * (1 + (attempt - 1) / 2), 256)
    return {"mem_mb": int(mem_mb), "runtime": int(runtime), "gpu": int(gpu)}


def smk_resources(cfg: Mapping[str, Any], rule: str) -> dict[str, Any]:
    """The ``resources:`` of a rule: ``**R.smk_resources(config, "train_detector")``."""
    def get(key: str) -> Callable[..., int]:
        return lambda wildcards, attempt: rule_resources(cfg, rule, wildcards, attempt)[key]

    return {"mem_mb": get("mem_mb"), "runtime": get("runtime"),
            "gpu": gpus_per_model_job(cfg) if rule in MODEL_RULES else 0}


# -- the estimates ------------------------------------------------------------------------

def _estimate(cfg: Mapping[str, Any], rule: str, wc: dict[str, str]) -> tuple[float, float]:
    """(minutes, MB) of one job before safety rounding."""
    if rule == "score_group":
        members = C.sharing_groups(cfg)[wc["group"]]
        minutes, mem = _model_job(cfg, "score_cell", members[0], "")
        cells = len(members) * len(C.seeds(cfg)) * len(cfg["generators"]["train"])
        share = (1 + LM_SHARE * (cells - 1)) / cfg["evaluation"]["group_jobs"]
        return STARTUP_MIN + (minutes - STARTUP_MIN) * share, mem
    if rule in MODEL_RULES:
        return _model_job(cfg, rule, wc["detector"], wc.get("generator", ""))
    # an import reads the base's architecture, not its weights
    if rule in ("build_base_model", "import_checkpoint", "prefetch_models", "gather_scores",
                "collect_warnings", "render_attack_report"):
        return float(STARTUP_MIN), float(BASE_MB)
    if rule in ("compute_metrics", "render_report"):
        rows = _score_rows(cfg) if rule == "compute_metrics" else (
            len(C.cells(cfg))
            * len(cfg["generators"]["test"]) * len(C.conditions(cfg)))
        return STARTUP_MIN + SAFETY * rows * 5e-6 / 60, BASE_MB + rows * 200 / 2**20
    return _data_job(cfg, rule, wc["dataset"], wc.get("split", "test"))


def _model_job(cfg: Mapping[str, Any], rule: str, detector: str, generator: str
               ) -> tuple[float, float]:
    det = C.detectors(cfg)[detector]
    cost = _cost(det)
    fwd, params = cost.forward_flops, cost.parameters
    gpu = gpus_per_model_job(cfg) > 0
    dtype = det.get("dtype", "float32")
    workers = cfg["data"]["num_workers"]
    threads = cfg["threads"]
    if rule == "train_detector":
        counts = _images(cfg, generator)
        images = counts["train"] * det["train"]["epochs"]
        flops = images * fwd * cost.train_factor
        batch = det["train"]["batch_size"]
        optimizer_mb = cost.trainable_share * params * 16 / 2**20  # fp32 weights, grad, Adam
    elif rule in ("attack_cell", "transfer_cell"):
        from bilora.attacks.plan import forward_equivalents

        counts = {"size": max(_images(cfg, g)["size"] for g in cfg["generators"]["test"])}
        images, per_image = forward_equivalents(cfg, cost.train_factor, rule == "attack_cell")
        flops = images * per_image * fwd
        batch = det["eval"]["batch_size"]
        optimizer_mb = 0.0
    else:
        counts = {"size": max(_images(cfg, g)["size"] for g in cfg["generators"]["test"])}
        images = _score_rows(cfg, detectors=1, cells=1)
        flops = images * fwd
        batch = det["eval"]["batch_size"]
        optimizer_mb = 0.0
    rate = GPU_FLOPS.get(dtype, GPU_FLOPS["float32"]) if gpu else CPU_FLOPS_PER_THREAD * threads
    if rule == "score_cell":
        rate *= INFERENCE_SPEEDUP
    decode_s = images * counts["size"] ** 2 * DECODE_S_PER_PIXEL / max(1, workers)
    weight_bytes = {"bfloat16": 2, "float16": 2}.get(dtype, 4)
    weights_mb = params * weight_bytes / 2**20
    load_min = params * 4 / DISK_BYTES_PER_S / 60    # checkpoints are read in fp32
    minutes = STARTUP_MIN + load_min + SAFETY * (flops / rate + decode_s) / 60
    # a GPU job holds the weights on the host while loading; a CPU job also its activations
    activations_mb = 0.0 if gpu else batch * fwd / 1e9 * (12 if rule == "train_detector" else 4)
    mem = (BASE_MB + 2 * weights_mb + optimizer_mb * (not gpu) + activations_mb
           + workers * WORKER_MB + batch * cost.side * cost.side * 3 * 4 / 2**20)
    return minutes, mem


def _data_job(cfg: Mapping[str, Any], rule: str, dataset: str, split: str
              ) -> tuple[float, float]:
    ds = cfg["data"]["datasets"][dataset]
    gens = C.generators_of(ds)
    counts = _images(cfg, gens[0])
    per_gen = counts["train"] + counts["val"] + counts["test_fakes"]
    images = len(gens) * per_gen + counts["test_reals"]
    pixels = images * counts["size"] ** 2
    threads = min(cfg["threads"], 4) if rule in ("make_procedural_dataset", "rebuild_lsun_real") \
        else 1
    if rule == "make_procedural_dataset":
        seconds, mem = pixels * 2e-6 / threads, BASE_MB + threads * 128
    elif rule == "fetch_zenodo_record":
        seconds, mem = pixels * PNG_BYTES_PER_PIXEL / DOWNLOAD_BYTES_PER_S, 1024
    elif rule in ("extract_archives", "check_split_digest"):
        share = 1.0 if rule == "extract_archives" else _split_share(counts, split, len(gens))
        seconds, mem = share * pixels * PNG_BYTES_PER_PIXEL / DISK_BYTES_PER_S * 2, 1024
    elif rule == "rebuild_lsun_real":
        lsun = ds["lsun"]
        records = lsun["skip"] + (len(lsun["order"]) + len(lsun["extra"])) * (
            lsun["train_per_generator"] + lsun["val_per_generator"])
        seconds = records * counts["size"] ** 2 * 4 * DECODE_S_PER_PIXEL / threads
        mem = BASE_MB + threads * 256
    else:  # organize_dataset: decode every image, hash it, write the manifest
        seconds = pixels * DECODE_S_PER_PIXEL * 1.5
        mem = BASE_MB + images * 1024 / 2**20
    return STARTUP_MIN + SAFETY * seconds / 60, mem


# -- sizes --------------------------------------------------------------------------------

def _images(cfg: Mapping[str, Any], generator: str) -> dict[str, int]:
    """Images of one generator: train (both classes), val, test fakes, test reals, side."""
    ds = next(d for d in cfg["data"]["datasets"].values() if generator in C.generators_of(d))
    if ds["source"] == "procedural":
        n = ds["test_per_class"]
        return {"train": 2 * ds["train_per_class"], "val": 0, "test_fakes": n, "test_reals": n,
                "size": ds["image_size"]}
    sample = cfg["data"]["sample"]
    test_fakes = sample["test_fakes_per_generator"]
    if ds["source"] == "zenodo":
        lsun = ds["lsun"] if "lsun" in ds else {"train_per_generator": 0,
                                                "val_per_generator": 0, "size": 256}
        return {"train": 2 * lsun["train_per_generator"], "val": 2 * lsun["val_per_generator"],
                "test_fakes": test_fakes or RICKER_TEST_FAKES,
                "test_reals": RICKER_TEST_FAKES, "size": lsun["size"]}
    train = sample["train_per_class"]
    return {"train": 2 * train if train else LOCAL_IMAGES["train"], "val": 0,
            "test_fakes": test_fakes or LOCAL_IMAGES["test"] // 2,
            "test_reals": LOCAL_IMAGES["test"] // 2, "size": LOCAL_IMAGES["size"]}


def _split_share(counts: dict[str, int], split: str, n_gen: int) -> float:
    total = n_gen * (counts["train"] + counts["val"] + counts["test_fakes"]) + counts["test_reals"]
    part = {"train": n_gen * counts["train"], "val": n_gen * counts["val"],
            "test": n_gen * counts["test_fakes"] + counts["test_reals"]}[split]
    return part / max(total, 1)


def _score_rows(cfg: Mapping[str, Any], detectors: int | None = None,
                cells: int | None = None) -> int:
    """Per-image scores: cells x test generators x (fakes + reals) x conditions."""
    per_cell = sum(_images(cfg, g)["test_fakes"] + _images(cfg, g)["test_reals"]
                   for g in cfg["generators"]["test"]) * len(C.conditions(cfg))
    detectors = len(C.detectors(cfg)) if detectors is None else detectors
    cells = len(cfg["generators"]["train"]) * len(C.seeds(cfg)) if cells is None else cells
    return detectors * cells * per_cell


def _cost(det: Mapping[str, Any]):
    """The detector kind's cost of a section (bilora.api.kinds.Cost)."""
    from bilora.api.kinds import kind

    return kind(det["kind"]).cost(dict(det))


def _runtime_scale(cfg: Mapping[str, Any]) -> float:
    return float((cfg.get("resources") or {}).get("runtime_scale", 1.0))


def _wildcard(wildcards: Any, name: str) -> str | None:
    if wildcards is None:
        return None
    value = wildcards.get(name) if isinstance(wildcards, Mapping) else getattr(wildcards, name,
                                                                               None)
    return str(value) if value else None


def _round_up(x: float, step: int) -> int:
    return int(math.ceil(x / step) * step)
