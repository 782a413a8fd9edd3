"""``bilora predict``: score any images with a saved detector, without labels or a manifest.

Inputs are folders (searched recursively for image files as
:func:`bilora.data.folders.list_images` does: by extension, hidden names skipped), image
files, and list files (one path a line; a relative path is relative to the list's folder; a
folder is searched as above; blank lines and ``#`` comments are skipped). Every file is read
and fully decoded once, as ``bilora organize`` checks an image
(:func:`bilora.data.manifest.inspect_image`): one that does not decode is skipped with its
reason, never fatal. The others go through the detector's own loading path
(:class:`bilora.data.dataset.ImageTable` at its ``input_size`` and ``input_fit``), in order.

The threshold is ``--threshold``, else the model folder's ``threshold.json``
(:mod:`bilora.model_files`), else 0.5; an image is fake (label 1) when P(fake) >= it, and
-1 when the detector gave no answer (NaN: Bi-LoRA's ``generate`` readout with another word).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bilora.data.folders import IMAGE_EXTENSIONS, list_images
from bilora.errors import ArtifactError, ConfigError, DataError

log = logging.getLogger("bilora.predict")

OUTPUT_COLUMNS = ["path", "sha1", "p_fake", "label", "word"]
SKIPPED_COLUMNS = ["path", "reason"]
OUT_SUFFIXES = (".csv", ".parquet")
DEFAULT_THRESHOLD = 0.5
_CHECKED = "the check of bilora predict"  # the "manifest" named by ImageTable's errors


@dataclass(frozen=True)
class Threshold:
    """The decision threshold used and where it came from."""

    value: float
    source: str  # "--threshold", "threshold.json" or "default"
    chosen_on: str | None = None


def check_out(out: str | os.PathLike) -> Path:
    """``--out`` as a path; ConfigError unless it ends in .csv or .parquet."""
    out = Path(out)
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise ConfigError(f"--out {out}: the output is written as CSV or parquet by its "
                          f"suffix; give a name ending in {' or '.join(OUT_SUFFIXES)}")
    return out


def choose_threshold(flag: float | None, model: str | os.PathLike) -> Threshold:
    """``flag`` when given, else the model folder's ``threshold.json``, else 0.5."""
    from bilora.model_files import THRESHOLD_FILE, read_threshold

    if flag is not None:
        if not 0 <= flag <= 1:
            raise ConfigError(f"--threshold {flag}: a threshold on P(fake) is in [0, 1]")
        return Threshold(float(flag), "--threshold")
    chosen = read_threshold(model)
    if chosen is not None:
        return Threshold(chosen["threshold"], THRESHOLD_FILE, chosen["chosen_on"])
    return Threshold(DEFAULT_THRESHOLD, "default")


def _expand(path: Path) -> list[str]:
    return [str(p) for p in list_images(path)] if path.is_dir() else [str(path)]


def gather_paths(inputs: Sequence[str | os.PathLike],
                 lists: Sequence[str | os.PathLike] = ()) -> list[str]:
    """The files to score, in order, each once: folders' image files, files as given, the
    entries of list files. A missing input or list is a DataError; a missing list entry is
    kept (it is skipped later with its reason)."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"{item}: no such file or folder")
        found += _expand(path)
    for listing in lists:
        try:
            text = Path(listing).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{listing}: cannot read the list of images ({exc})") from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line).expanduser()
                found += _expand(path if path.is_absolute() else Path(listing).parent / path)
    unique: dict[str, str] = {}  # absolute path -> the path as found, first one kept
    for p in found:
        unique.setdefault(os.path.abspath(p), p)
    return list(unique.values())


def check_images(paths: Sequence[str], workers: int = 1, progress: bool = True
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the files that decode: ``path``, ``abspath``, ``sha1``; the others: ``path``,
    ``reason``), each file read and decoded as ``bilora organize`` checks an image."""
    from bilora.data.manifest import inspect_image
    from bilora.evaluation import progress_bar

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(progress_bar(pool.map(inspect_image, paths), "checking", progress,
                                    total=len(paths), unit="img"))
    good, skipped = [], []
    for path, (reason, _, sha1) in zip(paths, results, strict=True):
        if reason:
            log.warning("skipped %s: %s", path, reason)
            skipped.append({"path": path, "reason": reason})
        else:
            good.append({"path": path, "abspath": os.path.abspath(path), "sha1": sha1})
    return (pd.DataFrame(good, columns=["path", "abspath", "sha1"]),
            pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))


def token_words(detector: Any, tokens: Sequence[int]) -> list[str]:
    """Each generated token as its word (the model's tokenizer); empty for NO_TOKEN and for
    a detector without a tokenizer."""
    from bilora.score_parts import NO_TOKEN

    tokenizer = getattr(getattr(detector, "processor", None), "tokenizer", None)
    words = {t: "" if t == NO_TOKEN or tokenizer is None else tokenizer.decode([t]).strip()
             for t in set(int(t) for t in tokens)}
    return [words[int(t)] for t in tokens]


def _changed(exc: Exception) -> DataError:
    """An image that changed between the check and its scoring, as a one-line DataError."""
    line = str(exc).strip().splitlines()[-1].split("ImageChanged: ", 1)[-1]
    path = re.split(rf" (?:is listed in|changed after) {_CHECKED}", line)[0]
    return DataError(f"{path} changed or vanished while bilora predict ran; run it again")


def score_images(detector: Any, images: pd.DataFrame, threshold: float, batch_size: int,
                 num_workers: int = 0, progress: bool = True) -> pd.DataFrame:
    """Scores of checked ``images`` (``check_images``) in ``OUTPUT_COLUMNS``."""
    from bilora.data.dataset import ImageChanged, ImageTable
    from bilora.evaluation import predict

    rows = images.assign(label=0, manifest=_CHECKED)
    table = ImageTable(rows, detector.input_size, fit=detector.input_fit)
    detector.eval()
    try:
        p_fake, tokens = predict(detector, table, batch_size, num_workers, "predict", progress)
    except ImageChanged as exc:
        raise _changed(exc) from None
    p = p_fake.numpy().astype("float32")
    label = np.where(np.isnan(p), -1, p >= threshold).astype("int8")
    return pd.DataFrame({"path": images["path"].to_numpy(), "sha1": images["sha1"].to_numpy(),
                         "p_fake": p, "label": label,
                         "word": token_words(detector, tokens.tolist())},
                        columns=OUTPUT_COLUMNS)


def sidecars(out: str | os.PathLike) -> tuple[Path, Path]:
    """(the skipped list, the JSON of what was run) written beside ``out``."""
    return Path(f"{out}.skipped.csv"), Path(f"{out}.json")


def write_outputs(scores: pd.DataFrame, skipped: pd.DataFrame, out: str | os.PathLike,
                  info: dict[str, Any]) -> None:
    """The skipped list and the JSON sidecar, then the scores (CSV or parquet by suffix,
    ``info`` in a parquet's metadata), each atomically: the scores file last."""
    from bilora.atomic import write_json
    from bilora.data.manifest import write_csv_atomic, write_parquet_atomic

    skipped_path, info_path = sidecars(out)
    write_csv_atomic(skipped, skipped_path)
    write_json(info_path, info)
    if Path(out).suffix.lower() == ".csv":
        write_csv_atomic(scores, out)
    else:
        write_parquet_atomic(scores, out, {k: v if isinstance(v, str) else json.dumps(v)
                                           for k, v in info.items()})


def run_predict(model: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                out: str | os.PathLike,
                lists: Sequence[str | os.PathLike] = (), threshold: float | None = None,
                batch_size: int | None = None, device: str = "auto", num_workers: int = 0,
                progress: bool = True) -> pd.DataFrame:
    """Score every image of ``inputs`` and ``lists`` with the model folder ``model`` and
    write ``out`` with its sidecars; returns the scores. DataError (nothing written) when no
    file is an image that decodes."""
    from bilora.api.detector import load_detector
    from bilora.model_files import DETECTOR_FILE, model_fingerprint, read_detector_meta
    from bilora.provenance import provenance

    out = check_out(out)
    if not (Path(model) / DETECTOR_FILE).is_file():
        raise ArtifactError(f"{Path(model) / DETECTOR_FILE} not found: {model} is not a saved "
                            "detector folder (train, or import weights, first)")
    chosen = choose_threshold(threshold, model)
    paths = gather_paths(inputs, lists)
    where = ", ".join(map(str, [*inputs, *lists]))
    if not paths:
        raise DataError(f"no image files in {where} (extensions "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))}; hidden files skipped)")
    images, skipped = check_images(paths, num_workers, progress)
    if images.empty:
        raise DataError(f"none of the {len(paths)} file(s) in {where} decodes as an image "
                        f"(e.g. {skipped['path'].iloc[0]}: {skipped['reason'].iloc[0]})")
    meta = read_detector_meta(model)
    det = load_detector(model, device)
    size = batch_size or int(det.cfg.get("eval", {}).get("batch_size") or 32)
    scores = score_images(det, images, chosen.value, size, num_workers, progress)
    info = {**provenance(meta["config"]), "model": str(Path(model).resolve()),
            "kind": meta["kind"], "describe": meta.get("describe", ""),
            "model_fingerprint": model_fingerprint(model), "threshold": chosen.value,
            "threshold_source": chosen.source, "threshold_chosen_on": chosen.chosen_on,
            "preprocessing": det.preprocessing(), "images": len(scores),
            "skipped": len(skipped), "skipped_file": sidecars(out)[0].name}
    write_outputs(scores, skipped, out, info)
    log.info("%d images scored, %d skipped; threshold %g (%s); written to %s", len(scores),
             len(skipped), chosen.value, chosen.source, out)
    return scores
