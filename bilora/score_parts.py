"""Per-image score tables and a cell's finished conditions, without torch.

A scoring job writes each finished condition to ``<cell>/scores.parquet.parts/
<perturbation>=<level>.parquet``, tagged with a fingerprint of what determines it; a rerun
(or the cell's scoring group) reuses the parts whose fingerprint matches.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SCORE_COLUMNS = ["image", "sha1", "generator", "label", "perturbation", "level", "p_fake",
                 "token"]
NO_TOKEN = -1  # detectors without a caption word
_FINGERPRINT = b"bilora_part_fingerprint"


def read_part(path: Path, fingerprint: str) -> pd.DataFrame | None:
    """A finished condition's scores if ``path`` holds them for ``fingerprint``."""
    import pyarrow.parquet as pq

    if not path.exists():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception:  # noqa: BLE001 - an unreadable part is rescored, never trusted
        return None
    if meta.get(_FINGERPRINT, b"").decode() != fingerprint:
        return None
    return pd.read_parquet(path)


def write_part(frame: pd.DataFrame, path: Path, fingerprint: str) -> None:
    """Write one condition's scores atomically, tagged with its fingerprint."""
    from bilora.data.manifest import write_parquet_atomic

    write_parquet_atomic(frame, path, {_FINGERPRINT.decode(): fingerprint})


def join_scores(rows: pd.DataFrame, unique: pd.DataFrame, p_fake, token, kind: str,
                level: str) -> pd.DataFrame:
    """Per-row scores of one condition from the scores of the unique images."""
    scored = pd.DataFrame({"abspath": unique["abspath"].to_numpy(), "p_fake": p_fake,
                           "token": token})
    merged = rows.merge(scored, on="abspath", how="left", validate="many_to_one")
    return pd.DataFrame({
        "image": merged["path"], "sha1": merged["sha1"], "generator": merged["generator"],
        "label": merged["label"].astype("int8"), "perturbation": kind, "level": level,
        "p_fake": merged["p_fake"].astype("float32"), "token": merged["token"].astype("int32")})
