"""Hugging Face dataset repos as a transport: a layout's ``hub: <repo id>`` key.

A dataset section whose layout takes a ``hub`` key (Community Forensics) may name a dataset
repo on the Hugging Face hub instead of a local ``path``. ``organize`` reads it from the hub
cache only (offline, :func:`snapshot`); ``bilora prefetch`` fills that cache on a machine
with network (the ``hub_dataset`` artifact type, :class:`HubDatasetHandler`), as does
``huggingface-cli download --repo-type dataset <repo id>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bilora.artifacts import Artifact
from bilora.data.folders import SourceError
from bilora.errors import ArtifactError

#: The files of a dataset repo a layout reads: its parquet shards.
PARQUET_PATTERNS = ["data/*.parquet", "data/**/*.parquet"]
ARTIFACT_TYPE = "hub_dataset"


def split_name(name: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> (``"org/name"``, ``"rev"``); no ``@``: no revision."""
    repo, sep, rev = name.partition("@")
    return repo, (rev or None) if sep else None


def artifact_name(repo_id: str, revision: str | None = None) -> str:
    """The artifact name of a dataset repo at a revision (``repo@rev``, or the repo id)."""
    return f"{repo_id}@{revision}" if revision else repo_id


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The repo's snapshot folder in the hub cache (its parquet shards), or None if absent."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision,
                                      local_files_only=True, allow_patterns=PARQUET_PATTERNS))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def prefetch_command(repo_id: str, revision: str | None = None) -> str:
    """The commands that put a dataset repo in the hub cache."""
    rev = f" --revision {revision}" if revision else ""
    return (f"`bilora prefetch` or `huggingface-cli download --repo-type dataset {repo_id}{rev} "
            f"--include 'data/*.parquet'`")


def snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of dataset repo ``repo_id`` (offline: the hub cache only);
    SourceError, on one line, says how to fetch it when it is not there."""
    found = cached_snapshot(repo_id, revision)
    if found is None or not any(found.glob("data/**/*.parquet")):
        at = f" at revision {revision}" if revision else ""
        raise SourceError(f"hub dataset {repo_id}{at} is not in the Hugging Face cache "
                          f"(organize reads it offline): run {prefetch_command(repo_id, revision)}"
                          " on a machine with network")
    return found


def parquet_files(folder: Path) -> list[Path]:
    """The parquet shards of a snapshot folder (``data/``), sorted."""
    return sorted(p for p in folder.glob("data/**/*.parquet") if p.is_file())


class HubDatasetHandler:
    """The ``hub_dataset`` artifact type: a dataset repo's parquet shards in the hub cache."""

    def must_exist(self, a: Artifact) -> bool:
        return False

    def local(self, a: Artifact) -> Path | None:
        return cached_snapshot(*split_name(a.name))

    def fetch(self, a: Artifact) -> Path:
        from huggingface_hub import snapshot_download

        repo, rev = split_name(a.name)
        return Path(snapshot_download(repo, repo_type="dataset", revision=rev,
                                      allow_patterns=PARQUET_PATTERNS))

    def check(self, a: Artifact, path: Path) -> list[Path]:
        files = parquet_files(path)
        if not files:
            raise ArtifactError(f"no parquet shards under {path}/data")
        return files


def dataset_artifacts(datasets: Mapping[str, Mapping[str, Any]]) -> list[Artifact]:
    """The hub dataset repos a config's datasets name (``hub`` keys without a local
    ``path``), as artifacts ``bilora prefetch`` fetches."""
    return [Artifact(ARTIFACT_TYPE, artifact_name(ds["hub"], ds.get("revision")),
                     f"data.datasets.{name}.hub")
            for name, ds in datasets.items() if ds.get("hub") and not ds.get("path")]
