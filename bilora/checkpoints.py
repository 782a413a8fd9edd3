"""Released checkpoints as cells: where one comes from, and its import into a cell's model.

A detector section with ``weights: {from: checkpoints, checkpoints: {<G>: <source>}}`` has
one cell per named training generator; the rule ``import_checkpoint`` writes each cell's
``model`` folder from its checkpoint instead of training it. A source is a local folder or a
Hugging Face hub id (at an optional ``revision``): ``bilora prefetch`` fetches hub ids into
the hub cache like any other artifact, and an offline job (``HF_HUB_OFFLINE=1``) reads the
cache. Provenance records the source, the revision and the sha256 of every file read.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
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


def artifacts(detector: str, section: dict[str, Any]) -> list[CheckpointArtifact]:
    """The checkpoints of one detector section, as artifacts (none for a trained one)."""
    from bilora.config import checkpoints

    return [CheckpointArtifact("checkpoint", c["source"],
                               f"detectors.{detector}.weights.checkpoints.{g}",
                               revision=c["revision"])
            for g, c in checkpoints(section).items()]


def locate(source: str, revision: str | None, key: str, allow_network: bool,
           configfile: str | None = None) -> tuple[Path, bool]:
    """(The local folder of a checkpoint, whether it was fetched now): a local folder as it
    is, a hub id from the hub cache or, when allowed, the network."""
    if looks_like_path(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise ArtifactError(f"{key}: {source} is not a folder")
        return folder, False
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


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint folder, by relative path."""
    return {p.relative_to(folder).as_posix(): file_hexdigest(p, "sha256")
            for p in sorted(folder.rglob("*")) if p.is_file()}


def resolve(a: CheckpointArtifact, allow_network: bool, configfile: str | None = None
            ) -> dict[str, Any]:
    """A checkpoint for ``bilora prefetch``: found (or fetched), with its bytes."""
    folder, fetched = locate(a.name, a.revision, a.key, allow_network, configfile)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {**asdict(a), "path": str(folder), "bytes": size, "fetched": fetched}


def import_checkpoint(spec: dict[str, Any], source: str, out: str | os.PathLike,
                      base_dir: str | None = None) -> Path:
    """One cell's ``model`` folder from its checkpoint (``spec``: ``config.import_spec``)."""
    from bilora.api.detector import import_detector
    from bilora.provenance import provenance

    revision = spec["checkpoint"]["revision"]
    key = f"detectors.{spec['detector_id']}.weights.checkpoints.{spec['train_generator']}"
    folder, _ = locate(source, revision, key, allow_network=not _offline())
    import_detector(spec["detector"], folder, out, base_dir, provenance(
        spec, checkpoint_source=source, checkpoint_revision=revision,
        checkpoint_path=folder.resolve(), checkpoint_sha256=json.dumps(file_hashes(folder))))
    return Path(out)
