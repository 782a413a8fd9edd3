"""The attack axis of a run, from ``evaluation.attacks`` (torch-free: read at DAG build).

An attack is white-box on the attacked detector's own score (``Detector.pixel_margin``);
the cells attacked are those of the listed training generators (all by default) for the
listed detectors (by default every detector whose kind has pixel gradients: the others are
named in a logged line, and take part in transfer only). Transfer: every attacked cell of a
``transfer.sources`` detector hands its adversarial images to every detector's cell of the
same training generator and seed.
"""

from __future__ import annotations

import logging
import re
from typing import Any, TypedDict

from bilora import config as C
from bilora.errors import ConfigError

log = logging.getLogger("bilora.attacks")

ATTACKS = ("fgsm", "pgd")
_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*/\s*255\s*$")


def parse_eps(value: Any, key: str) -> float:
    """An L-infinity radius in [0, 1] pixel units, given as a number or as ``"k/255"``;
    ConfigError naming ``key`` when it is not in (0, 1]."""
    if isinstance(value, str):
        m = _FRACTION.match(value)
        if not m:
            raise ConfigError(f"{key}: {value!r} is not a number or 'k/255'")
        eps = float(m.group(1)) / 255
    elif isinstance(value, int | float) and not isinstance(value, bool):
        eps = float(value)
    else:
        raise ConfigError(f"{key}: {value!r} is not a number or 'k/255'")
    if not 0 < eps <= 1:
        raise ConfigError(f"{key}: eps {value!r} is outside (0, 1] (pixels in [0, 1]; "
                          "8/255 is written '8/255' or 0.0314)")
    return eps


def eps_text(eps: float) -> str:
    """An eps as the tables write it: ``8/255``."""
    return f"{eps * 255:.4g}/255"


def condition(attack: str, eps: float) -> str:
    """An attack condition's name in file names and tables: ``pgd=8`` (eps in 255ths)."""
    return f"{attack}={eps * 255:.4g}"


class Step(TypedDict):
    attack: str
    eps: float
    name: str
    steps: int
    step_size: float


def grid(attacks: dict[str, Any], where: str = "evaluation.attacks") -> list[Step]:
    """The attack conditions of an ``evaluation.attacks`` block, in config order."""
    out: list[Step] = []
    for attack in ATTACKS:
        block = attacks.get(attack)
        if not block:
            continue
        steps = 1 if attack == "fgsm" else int(block["steps"])
        if steps < 1:
            raise ConfigError(f"{where}.{attack}.steps: {steps} is not >= 1")
        for i, value in enumerate(block["eps"]):
            eps = parse_eps(value, f"{where}.{attack}.eps[{i}]")
            if eps * 255 < 1 - 1e-6:  # the saved image is uint8 within floor(255 eps)
                raise ConfigError(f"{where}.{attack}.eps[{i}]: {value!r} is below 1/255: the "
                                  "uint8 image it saves cannot differ from the clean one")
            size = eps
            if attack == "pgd":
                given = block.get("step_size")
                size = (parse_eps(given, f"{where}.pgd.step_size") if given is not None
                        else eps / 4)
                if size > eps + 1e-12:
                    raise ConfigError(f"{where}.pgd.step_size: {given!r} is larger than eps "
                                      f"{value!r} (every step would leave the eps ball; "
                                      "null gives eps / 4)")
            out.append({"attack": attack, "eps": eps, "name": condition(attack, eps),
                        "steps": steps, "step_size": size})
    names = [s["name"] for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: eps listed twice: {', '.join(dup)}")
    return out


def block(cfg: dict[str, Any]) -> dict[str, Any] | None:
    return cfg["evaluation"].get("attacks")


def white_box_detectors(cfg: dict[str, Any]) -> list[str]:
    """Detectors attacked white-box: ``attacks.detectors``, or every detector whose kind
    gives pixel gradients (the others are logged by :func:`check`)."""
    from bilora.api.kinds import white_box_refusal

    spec = block(cfg)
    if not spec:
        return []
    dets = C.detectors(cfg)
    if spec.get("detectors") is not None:
        return list(spec["detectors"])
    return [d for d, s in dets.items() if white_box_refusal(s) is None]


def trains(cfg: dict[str, Any]) -> list[str]:
    spec = block(cfg) or {}
    return list(spec.get("train") or cfg["generators"]["train"])


def attacked_cells(cfg: dict[str, Any]) -> list[C.Cell]:
    """Cells whose detector is attacked white-box (rule attack_cell)."""
    chosen, keep = set(white_box_detectors(cfg)), set(trains(cfg))
    return [c for c in C.cells(cfg) if c.detector in chosen and c.train in keep]


def transfer_cells(cfg: dict[str, Any]) -> dict[C.Cell, list[C.Cell]]:
    """Target cell -> the source cells (same training generator and seed) whose adversarial
    images it scores (rule transfer_cell); a detector is never its own source."""
    spec = block(cfg) or {}
    sources = (spec.get("transfer") or {}).get("sources") or []
    if not sources:
        return {}
    attacked = attacked_cells(cfg)
    keep = set(trains(cfg))
    out: dict[C.Cell, list[C.Cell]] = {}
    for cell in C.cells(cfg):
        if cell.train not in keep:
            continue
        src = [a for a in attacked if a.detector in sources and a.detector != cell.detector
               and (a.train, a.seed) == (cell.train, cell.seed)]
        if src:
            out[cell] = src
    return out


def check(cfg: dict[str, Any], source: str = "config") -> list[str]:
    """ConfigError (one line naming the key) for a bad ``evaluation.attacks``; returns the
    lines to log: detectors left out of white-box attacks and why, and the ``train`` or
    ``transfer.sources`` entries this config lacks (left out, so an overlay on the default
    need not restate the block)."""
    from bilora.api.kinds import white_box_refusal

    spec = block(cfg)
    if not spec:
        return []
    where = f"{source}: evaluation.attacks"
    steps = grid(spec, where)
    if not steps:
        raise ConfigError(f"{where}: no attack: give fgsm.eps or pgd.eps")
    dets = C.detectors(cfg)
    for key, meaning in (("train", "every training generator"),
                         ("detectors", "every detector with pixel gradients")):
        if spec.get(key) is not None and not spec[key]:
            raise ConfigError(f"{where}.{key}: [] attacks no cell (null: {meaning}; no "
                              "attacks: evaluation.attacks: null)")
    jpegs = list(spec.get("then_jpeg") or [])
    twice = sorted({q for q in jpegs if jpegs.count(q) > 1})
    if twice:
        raise ConfigError(f"{where}.then_jpeg: quality listed twice: "
                          f"{', '.join(map(str, twice))}")
    lines, refused = [], []
    # train and transfer.sources name cells of this config: an overlay on the default that
    # drops sim-LDM or the ResNet50 keeps its attack grid, so what it lacks is a logged note
    for g in spec.get("train") or []:
        if g not in cfg["generators"]["train"]:
            lines.append(f"evaluation.attacks.train: {g!r} is not a training generator here "
                         f"(generators.train: {', '.join(cfg['generators']['train'])}); "
                         "no cell trained on it is attacked")
    for d in spec.get("detectors") or []:
        if d not in dets:
            raise ConfigError(f"{where}.detectors: no detector {d!r}; known: {', '.join(dets)}")
        refusal = white_box_refusal(dets[d])
        if refusal is not None:
            key, why = refusal
            raise ConfigError(f"{where}.detectors: {d!r} cannot be attacked white-box "
                              f"(detectors.{d}.{key}: {why}); list it only as a transfer "
                              "target (every detector is one)")
    if spec.get("detectors") is None:
        for d, s in dets.items():
            refusal = white_box_refusal(s)
            if refusal is not None:
                refused.append(f"detectors.{d}.{refusal[0]}: {refusal[1]}")
                lines.append(f"evaluation.attacks: {d} is not attacked white-box "
                             f"(detectors.{d}.{refusal[0]}: {refusal[1]}); it still scores "
                             "the transferred images")
    chosen = white_box_detectors(cfg)
    if not chosen:
        lines.append(f"evaluation.attacks: no detector here can be attacked white-box "
                     f"({'; '.join(refused)}); no attack runs (evaluation.attacks: null "
                     "says so without this note)")
    elif not attacked_cells(cfg):
        lines.append("evaluation.attacks: no cell is attacked (evaluation.attacks.train "
                     "names no training generator of this config)")
    for d in (spec.get("transfer") or {}).get("sources") or []:
        if chosen and d not in chosen:
            lines.append(f"evaluation.attacks.transfer.sources: {d!r} is not attacked "
                         f"white-box here (attacked: {', '.join(chosen)}); no images are "
                         "transferred from it")
    return lines


def forward_equivalents(cfg: dict[str, Any], train_factor: float = 3.0,
                        white_box: bool = True) -> tuple[int, float]:
    """(images of one cell's job, scoring forwards per image) of the attack grid: each
    gradient step costs ``train_factor`` forwards (a forward and a backward to the pixels);
    every condition is scored once plus once per ``then_jpeg`` quality. A transfer job
    (``white_box`` False) scores each source's images only."""
    spec = block(cfg) or {}
    if not spec:
        return 0, 0.0
    steps = grid(spec)
    images = spec["max_images"] * len(cfg["generators"]["test"])
    scored = (len(steps) + 1) * (1 + len(spec.get("then_jpeg") or []))
    if not white_box:
        sources = len((spec.get("transfer") or {}).get("sources") or [])
        return images, float(scored * max(sources, 1))
    return images, float(scored + train_factor * sum(s["steps"] for s in steps))


class AttackSpec(TypedDict):
    detector_id: str
    steps: list[Step]
    max_images: int
    then_jpeg: list[int]
    batch_size: int
    test_generators: list[str]
    seed: int
    device: str
    jpeg_quality: int | None


def attack_spec(cfg: dict[str, Any], detector: str) -> AttackSpec:
    """One attack job's slice (a rerun trigger): the grid, the subset, the detector's batch."""
    spec = block(cfg) or {}
    return {"detector_id": detector, "steps": grid(spec), "max_images": spec["max_images"],
            "then_jpeg": list(spec.get("then_jpeg") or []),
            "batch_size": int(spec.get("batch_size") or
                              C.detectors(cfg)[detector]["eval"]["batch_size"]),
            "test_generators": cfg["generators"]["test"], "seed": cfg["seed"],
            "device": cfg["device"], "jpeg_quality": C.jpeg_quality(cfg)}


def report_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    """The attack report's slice: labels, order, the threshold and the transfer eps."""
    spec = block(cfg) or {}
    return {"labels": C.labels(cfg), "detectors": list(C.detectors(cfg)),
            "threshold": cfg["evaluation"]["threshold"],
            "confidence": cfg["metrics"]["confidence"],
            "train_generators": cfg["generators"]["train"],
            "test_generators": cfg["generators"]["test"],
            "transfer_sources": (spec.get("transfer") or {}).get("sources") or []}
