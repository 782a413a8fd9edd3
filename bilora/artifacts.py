"""Pretrained artifacts (a BLIP-2 checkpoint, timm ImageNet weights): where they come from.

Every pretrained artifact a config needs comes from one of three places:

1. a local folder or file named in the config (``base_model.name_or_path`` a folder saved
   with ``save_pretrained``; a timm detector's ``pretrained_file``);
2. the caches as their libraries lay them out: Hugging Face's hub cache (``HF_HOME``,
   ``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` respected) for BLIP-2 and for timm weights hosted
   on the hub, torch's hub cache (``TORCH_HOME``) for timm weights behind a URL;
3. the network, when allowed: ``bilora prefetch`` on a machine with network (a cluster's
   login node) fills those caches.

Compute nodes are often offline: the workflow's ``prefetch_models`` rule runs before any
training job and, offline, only checks that every artifact is present and loadable,
failing in seconds with the artifact's name and the command that fetches it.

:func:`check_bilora_base` is torch-free: the Snakefile calls it when the DAG is built.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bilora.errors import ArtifactError, ConfigError

#: A Hugging Face hub repository id: ``name`` or ``org/name``.
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Files of a BLIP-2 checkpoint a prefetch takes (weights, configs, tokenizer, processor).
BLIP2_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.json"]


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub id."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).exists() or name.count("/") > 1


def check_bilora_base(section: dict[str, Any], key: str) -> None:
    """A pretrained base must be a hub id (``org/name``) or an existing checkpoint folder."""
    base = section["base_model"]
    if base["source"] != "pretrained":
        return
    name = base["name_or_path"]
    where = f"{key}.base_model.name_or_path"
    if looks_like_path(name):
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"{where}: {name!r} is not a folder holding a saved BLIP-2 "
                              f"checkpoint (no config.json there)")
    elif not HUB_ID.match(name):
        raise ConfigError(f"{where}: {name!r} is neither a hub id (org/name) nor a local folder")


@dataclass(frozen=True)
class Artifact:
    """One pretrained artifact a config needs."""

    kind: str  # "blip2" | "timm"
    name: str  # hub id, folder, or timm model name
    key: str  # the config key that asks for it
    file: str | None = None  # a local weights file (timm's pretrained_file)


def needed(detectors: dict[str, dict[str, Any]]) -> list[Artifact]:
    """The pretrained artifacts of a run's detectors (each once, in config order), then the
    released checkpoints of imported detectors (``bilora.checkpoints``)."""
    from bilora.checkpoints import artifacts as checkpoint_artifacts

    out: dict[tuple, Artifact] = {}
    released = [a for det, s in detectors.items() for a in checkpoint_artifacts(det, s)]
    for det, s in detectors.items():
        if s["kind"] == "bilora" and s["base_model"]["source"] == "pretrained":
            a = Artifact("blip2", s["base_model"]["name_or_path"],
                         f"detectors.{det}.base_model.name_or_path")
        elif s["kind"] == "timm" and s["pretrained"]:
            a = Artifact("timm", s["model_name"], f"detectors.{det}.pretrained_file",
                         s["pretrained_file"])
        else:
            continue
        out.setdefault((a.kind, a.name, a.file), a)
    return list(out.values()) + released


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


# -- BLIP-2 -----------------------------------------------------------------------------

def _blip2_files(folder: Path) -> list[Path]:
    """The files a BLIP-2 checkpoint folder must hold; ArtifactError names what is missing."""
    from transformers import Blip2Config

    if not (folder / "config.json").is_file():
        raise ArtifactError(f"{folder}: no config.json")
    Blip2Config.from_pretrained(folder)  # parses: the checkpoint is loadable
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        weights = [folder / s for s in shards]
    else:
        weights = [folder / "model.safetensors"]
    missing = [w.name for w in weights if not w.is_file()]
    if missing:
        raise ArtifactError(f"{folder}: weight files missing: {', '.join(missing[:5])}")
    processor = [folder / n for n in ("preprocessor_config.json", "processor_config.json")]
    if not any(p.is_file() for p in processor):
        raise ArtifactError(f"{folder}: no preprocessor_config.json (the image processor)")
    return [folder / "config.json", *weights]


def _blip2_local(a: Artifact) -> Path | None:
    if looks_like_path(a.name):
        return Path(a.name).expanduser()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(a.name, local_files_only=True,
                                      allow_patterns=BLIP2_PATTERNS))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _blip2_fetch(a: Artifact) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(a.name, allow_patterns=BLIP2_PATTERNS))


# -- timm ---------------------------------------------------------------------------------

def _timm_source(name: str) -> tuple[str, str, str]:
    """(where, id, file name) of timm's default weights: ``hf`` (hub id, file) or ``url``."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ArtifactError(f"timm knows no pretrained weights for {name!r}")
    cfg = cfg.to_dict()
    if cfg.get("hf_hub_id"):
        return "hf", cfg["hf_hub_id"], cfg.get("hf_hub_filename") or ""
    if cfg.get("url"):
        return "url", cfg["url"], os.path.basename(cfg["url"])
    raise ArtifactError(f"timm's pretrained config of {name!r} names no hub id and no URL")


def _timm_local(a: Artifact) -> Path | None:
    if a.file:
        return Path(a.file).expanduser()
    where, ident, filename = _timm_source(a.name)
    if where == "hf":
        from huggingface_hub import try_to_load_from_cache

        for f in ([filename] if filename else ["model.safetensors", "pytorch_model.bin"]):
            hit = try_to_load_from_cache(ident, f)
            if isinstance(hit, str):
                return Path(hit)
        return None
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return path if path.is_file() else None


def _timm_check(a: Artifact, path: Path) -> list[Path]:
    """Loadable, and holding every weight of the architecture but its classifier."""
    from baselines.timm_detector import check_weights_file

    if not path.is_file():
        raise ArtifactError(f"{path}: no such weights file")
    check_weights_file({"model_name": a.name, "model_kwargs": {}, "pretrained_file": str(path)})
    return [path]


def _timm_fetch(a: Artifact) -> Path:
    where, ident, filename = _timm_source(a.name)
    if where == "hf":
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError

        names = [filename] if filename else ["model.safetensors", "pytorch_model.bin"]
        for f in names:
            try:
                return Path(hf_hub_download(ident, f))
            except RemoteEntryNotFoundError:  # not in the repo: the next name timm would try
                continue
        raise ArtifactError(f"the hub repo {ident} holds none of {', '.join(names)}")
    from timm.models import download_cached_file

    return Path(download_cached_file(ident, progress=True))


# -- both -------------------------------------------------------------------------------------

def _reason(exc: BaseException) -> str:
    """One line saying why a download failed: the hub's status, message and URL for an HTTP
    error; otherwise the error's first line (and its cause's)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        said = "; ".join((exc.server_message or exc.response.reason_phrase).splitlines())
        return (f"the hub answered {exc.response.status_code} ({said}) for "
                f"{exc.response.request.method} {exc.response.url}")
    if isinstance(exc, ArtifactError):
        return str(exc)
    out = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    cause = _reason(exc.__cause__) if exc.__cause__ is not None else ""
    return f"{out} ({cause})" if cause and cause not in out else out


def _download_errors() -> tuple[type[BaseException], ...]:
    """What a failed download raises: our errors, OSError (huggingface_hub's HTTP errors, and
    requests' in older versions, are OSErrors too) and the HTTP client's own base class
    (httpx2 for huggingface_hub 2.x, httpx for 1.x)."""
    import importlib

    errors: list[type[BaseException]] = [ArtifactError, OSError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _fetch(a: Artifact) -> Path:
    """Download ``a`` into its library's cache; ArtifactError names it, its key and why not."""
    try:
        return _blip2_fetch(a) if a.kind == "blip2" else _timm_fetch(a)
    except _download_errors() as exc:
        raise ArtifactError(f"{a.kind} artifact {a.name!r} ({a.key}) could not be fetched: "
                            f"{_reason(exc)}") from None


def fetch_command(configfile: str | None) -> str:
    return "bilora prefetch" + (f" --configfile {configfile}" if configfile else "")


def resolve(a: Artifact, allow_network: bool, configfile: str | None = None
            ) -> dict[str, Any]:
    """Find (or, with network, fetch) one artifact and check it is loadable. Returns what
    was found: path, bytes, and whether it was fetched now. ArtifactError names the
    artifact, its config key and the command that fetches it."""
    if a.kind == "checkpoint":
        from bilora.checkpoints import resolve as resolve_checkpoint

        return resolve_checkpoint(a, allow_network, configfile)
    local = _blip2_local(a) if a.kind == "blip2" else _timm_local(a)
    fetched = False
    if local is None or not local.exists():
        if a.file or (a.kind == "blip2" and looks_like_path(a.name)):
            raise ArtifactError(f"{a.key}: {local or a.name} does not exist")
        if not allow_network:
            raise ArtifactError(
                f"{a.kind} artifact {a.name!r} ({a.key}) is not in the local caches and the "
                f"network is off (HF_HUB_OFFLINE=1 or --check): run `{fetch_command(configfile)}`"
                f" on a machine with network, or name a local copy in {a.key}")
        local = _fetch(a)
        fetched = True
    try:
        files = _blip2_files(local) if a.kind == "blip2" else _timm_check(a, local)
    except ArtifactError as exc:
        raise ArtifactError(f"{a.kind} artifact {a.name!r} ({a.key}): {exc}") from None
    return {**asdict(a), "path": str(local), "bytes": _size(files), "fetched": fetched}


def prefetch(artifacts: list[Artifact], check_only: bool = False,
             configfile: str | None = None) -> list[dict[str, Any]]:
    """Resolve every artifact; offline (``HF_HUB_OFFLINE=1``) or with ``check_only``, only
    check that each is present and loadable."""
    allow = not (check_only or _offline())
    found, problems = [], []
    for a in artifacts:
        try:
            found.append(resolve(a, allow, configfile))
        except ArtifactError as exc:
            problems.append(str(exc))
    if problems:  # every missing artifact at once, not one per run
        raise ArtifactError("; ".join(problems))
    return found
