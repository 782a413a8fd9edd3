"""Released checkpoints as cells: where one comes from, and its import into a cell's model.

A detector section with ``weights: {from: checkpoints, checkpoints: {<G>: <source>}}`` has
one cell per named training generator; the rule ``import_checkpoint`` writes each cell's
``model`` folder from its checkpoint instead of training it. A source is a local folder or
file, a Hugging Face hub id (at an optional ``revision``), or one file behind a URL pinned
by its size and sha256: ``bilora prefetch`` fetches hub ids into the hub cache and URLs into
``$BILORA_CHECKPOINTS`` (default ``~/.cache/bilora/checkpoints/<sha256>/<file name>``;
resumable, retried, verified, renamed into place complete, with the Zenodo fetcher's
transport), and an offline job (``HF_HUB_OFFLINE=1``) reads those caches. Provenance records
the source, the revision and the sha256 of every file read.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bilora.artifacts import Artifact, _offline, fetch_command, looks_like_path
from bilora.atomic import file_hexdigest
from bilora.errors import ArtifactError

#: Files of a checkpoint folder on the hub a prefetch takes.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.txt", "*.model"]


@dataclass(frozen=True)
class CheckpointArtifact(Artifact):
    """A released checkpoint a detector section imports (kind ``checkpoint``)."""

    revision: str | None = None
    size: int | None = None  # a URL's file: pinned size and sha256
    sha256: str | None = None


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def cache_dir() -> Path:
    """Where checkpoints behind URLs are kept: ``$BILORA_CHECKPOINTS`` or
    ``~/.cache/bilora/checkpoints``."""
    return Path(os.environ.get("BILORA_CHECKPOINTS", "~/.cache/bilora/checkpoints")).expanduser()


def file_name(url: str) -> str:
    """The name a URL's file is kept under: its last path segment (the one before
    ``/content`` for Zenodo's file links)."""
    parts = [p for p in url.split("?", 1)[0].split("/")[3:] if p]
    if len(parts) > 1 and parts[-1] == "content":
        parts.pop()
    return posixpath.basename(parts[-1]) if parts else "checkpoint"


def _locate_url(url: str, size: int, sha256: str, key: str, allow_network: bool,
                configfile: str | None) -> tuple[Path, bool]:
    """The cached file of a URL (downloaded when allowed and missing or changed)."""
    from bilora.data.fetch import FetchError, RemoteFile, download, make_pool

    name = file_name(url)
    folder = cache_dir() / sha256
    path = folder / name
    if path.is_file() and path.stat().st_size == size \
            and file_hexdigest(path, "sha256") == sha256:
        return path, False
    if not allow_network:
        raise ArtifactError(
            f"checkpoint {url} ({key}) is not in {folder} and the network is off "
            f"(HF_HUB_OFFLINE=1 or --check): run `{fetch_command(configfile)}` on a machine "
            f"with network, or put the file there")
    path.unlink(missing_ok=True)  # a changed file: fetch again (a .part resumes)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return download(make_pool(), RemoteFile(name, size, "", url), folder,
                        digest=("sha256", sha256)), True
    except FetchError as exc:
        raise ArtifactError(f"checkpoint {url} ({key}): {exc}") from None


def artifacts(detector: str, section: dict[str, Any]) -> list[CheckpointArtifact]:
    """The checkpoints of one detector section, as artifacts (none for a trained one)."""
    from bilora.config import checkpoints

    return [CheckpointArtifact("checkpoint", c["source"],
                               f"detectors.{detector}.weights.checkpoints.{g}",
                               revision=c["revision"], size=c.get("size"),
                               sha256=c.get("sha256"))
            for g, c in checkpoints(section).items()]


def locate(source: str, revision: str | None, key: str, allow_network: bool,
           configfile: str | None = None, size: int | None = None,
           sha256: str | None = None) -> tuple[Path, bool]:
    """(The local folder or file of a checkpoint, whether it was fetched now): a local path
    as it is, a hub id from the hub cache, a URL from the checkpoint cache or, when allowed,
    the network."""
    if is_url(source):
        if size is None or sha256 is None:
            raise ArtifactError(f"{key}: a URL checkpoint needs its size and sha256")
        return _locate_url(source, size, sha256, key, allow_network, configfile)
    if looks_like_path(source):
        local = Path(source).expanduser()
        if not local.exists():
            raise ArtifactError(f"{key}: {source} does not exist")
        return local, False
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, revision=revision, local_files_only=True,
                                      allow_patterns=CHECKPOINT_PATTERNS)), False
    except (LocalEntryNotFoundError, OSError, ValueError):
        if not allow_network:
            raise ArtifactError(
                f"checkpoint {source!r} ({key}) is not in the local caches and the network is "
                f"off (HF_HUB_OFFLINE=1 or --check): run `{fetch_command(configfile)}` on a "
                f"machine with network, or name a local folder in {key}") from None
    from bilora.artifacts import _download_errors, _reason

    try:
        return Path(snapshot_download(source, revision=revision,
                                      allow_patterns=CHECKPOINT_PATTERNS)), True
    except _download_errors() as exc:
        raise ArtifactError(f"checkpoint {source!r} ({key}) could not be fetched: "
                            f"{_reason(exc)}") from None


def file_hashes(local: Path) -> dict[str, str]:
    """sha256 of a checkpoint file, or of every file of a checkpoint folder, by relative
    path."""
    if local.is_file():
        return {local.name: file_hexdigest(local, "sha256")}
    return {p.relative_to(local).as_posix(): file_hexdigest(p, "sha256")
            for p in sorted(local.rglob("*")) if p.is_file()}


class CheckpointHandler:
    """The artifact type ``checkpoint`` for :func:`bilora.artifacts.resolve`: found in place
    or in a cache, fetched when the network is allowed, its files the ones imported."""

    def must_exist(self, a: CheckpointArtifact) -> bool:
        return not is_url(a.name) and looks_like_path(a.name)

    def local(self, a: CheckpointArtifact) -> Path | None:
        try:
            return locate(a.name, a.revision, a.key, False, size=a.size, sha256=a.sha256)[0]
        except ArtifactError:
            return None

    def fetch(self, a: CheckpointArtifact) -> Path:
        return locate(a.name, a.revision, a.key, True, size=a.size, sha256=a.sha256)[0]

    def check(self, a: CheckpointArtifact, path: Path) -> list[Path]:
        return [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]


def import_checkpoint(spec: dict[str, Any], source: str, out: str | os.PathLike,
                      base_dir: str | None = None) -> Path:
    """One cell's ``model`` folder from its checkpoint (``spec``: ``config.import_spec``)."""
    from bilora.api.detector import import_detector
    from bilora.provenance import provenance

    ckpt = spec["checkpoint"]
    revision = ckpt["revision"]
    key = f"detectors.{spec['detector_id']}.weights.checkpoints.{spec['train_generator']}"
    folder, _ = locate(source, revision, key, allow_network=not _offline(),
                       size=ckpt.get("size"), sha256=ckpt.get("sha256"))
    import_detector(spec["detector"], folder, out, base_dir, provenance(
        spec, checkpoint_source=source, checkpoint_revision=revision,
        checkpoint_path=folder.resolve(), checkpoint_sha256=json.dumps(file_hashes(folder))))
    return Path(out)
