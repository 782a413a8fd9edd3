"""Pretrained artifacts (a VLM checkpoint, a classifier's ImageNet weights): where they come from.

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

:func:`needed` and :func:`check_checkpoint_name` are torch-free: the Snakefile calls them when the
DAG is built. Each detector kind lists its artifacts and declares their types (how to find,
fetch and check one): :mod:`bilora.api.kinds`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
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


def check_checkpoint_name(name: str, key: str) -> None:
    """A pretrained checkpoint must be a hub id (``org/name``) or an existing folder holding
    a saved checkpoint (its config.json); ConfigError names ``key``."""
    if looks_like_path(name):
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"{key}: {name!r} is not a folder holding a saved checkpoint (no "
                              "config.json there)")
    elif not HUB_ID.match(name):
        raise ConfigError(f"{key}: {name!r} is neither a hub id (org/name) nor a local folder")


@dataclass(frozen=True)
class Artifact:
    """One pretrained artifact a config needs."""

    kind: str  # its artifact type (a detector kind's ``artifact_types``), e.g. "blip2", "timm"
    name: str  # hub id, folder, or model name
    key: str  # the config key that asks for it
    file: str | None = None  # a local weights file named in the config


def needed(detectors: dict[str, dict[str, Any]]) -> list[Artifact]:
    """The pretrained artifacts of a run's detectors (each once, in config order), as each
    detector kind lists them, then the released checkpoints of imported detectors
    (``bilora.checkpoints``)."""
    from bilora.api.kinds import kind
    from bilora.checkpoints import artifacts as checkpoint_artifacts

    out: dict[tuple, Artifact] = {}
    released = [a for det, s in detectors.items() for a in checkpoint_artifacts(det, s)]
    for det, s in detectors.items():
        listed = kind(s["kind"]).artifacts
        for a in listed(s, f"detectors.{det}") if listed is not None else []:
            out.setdefault((a.kind, a.name, a.file), a)
    return list(out.values()) + released


#: Artifact types of the harness itself, not of a kind: released checkpoints, hub datasets.
HARNESS_TYPES = {"checkpoint": "bilora.checkpoints:CheckpointHandler",
                 "hub_dataset": "bilora.data.hub:HubDatasetHandler"}


def handler(artifact_type: str) -> Any:
    """What finds, fetches and checks artifacts of a type: the harness's own, or the
    detector kind's that declares it (``local``, ``fetch``, ``check``, ``must_exist``)."""
    from bilora.api.kinds import kind, kind_names
    from bilora.api.plugins import resolve as resolve_ref

    if artifact_type in HARNESS_TYPES:
        return resolve_ref(HARNESS_TYPES[artifact_type])()
    for name in kind_names():
        found = kind(name).artifact_types()
        if artifact_type in found:
            return found[artifact_type]
    raise ArtifactError(f"no detector kind declares the artifact type {artifact_type!r}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


# -- a checkpoint folder on the hub (a VLM base's) -------------------------------------------

class HubCheckpoint:
    """An artifact type for a checkpoint folder: a local folder, or a hub repository's
    snapshot (``BLIP2_PATTERNS``) in the hub cache; ``files(folder)`` checks it is loadable
    and returns the files that make it (a VLM base's ``checkpoint_files``)."""

    def __init__(self, files: Callable[[Path], list[Path]]):
        self.files = files

    def must_exist(self, a: Artifact) -> bool:
        return looks_like_path(a.name)

    def local(self, a: Artifact) -> Path | None:
        if looks_like_path(a.name):
            return Path(a.name).expanduser()
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(a.name, local_files_only=True,
                                          allow_patterns=BLIP2_PATTERNS))
        except (LocalEntryNotFoundError, OSError, ValueError):
            return None

    def fetch(self, a: Artifact) -> Path:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(a.name, allow_patterns=BLIP2_PATTERNS))

    def check(self, a: Artifact, path: Path) -> list[Path]:
        return self.files(path)


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
        return handler(a.kind).fetch(a)
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
    how = handler(a.kind)
    local = how.local(a)
    fetched = False
    if local is None or not local.exists():
        if a.file or how.must_exist(a):
            raise ArtifactError(f"{a.key}: {local or a.name} does not exist")
        if not allow_network:
            raise ArtifactError(
                f"{a.kind} artifact {a.name!r} ({a.key}) is not in the local caches and the "
                f"network is off (HF_HUB_OFFLINE=1 or --check): run `{fetch_command(configfile)}`"
                f" on a machine with network, or name a local copy in {a.key}")
        local = _fetch(a)
        fetched = True
    try:
        files = how.check(a, local)
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
