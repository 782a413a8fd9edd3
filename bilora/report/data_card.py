"""The data card: what the images are, per dataset x split x class x generator, from the
manifests alone (counts, unique images, file formats, modes, sizes, JPEG quality).

Manifests written before ``format``, ``mode``, ``width``, ``height`` and ``jpeg_quality``
existed still work: those columns show "n/a".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bilora.errors import DataError
from bilora.report.context import Context
from bilora.report.layout import Column, Table

BASE = ["path", "label", "generator", "split", "sha1"]
EXTRA = ["format", "mode", "width", "height", "jpeg_quality"]
SPLITS = ("train", "val", "test")
CLASSES = {0: "real", 1: "fake"}
ALL_GENERATORS = "(all generators)"
FORMAT_BIAS = (
    "Format bias: a detector can learn the file format instead of the generator when the "
    "reals and fakes of a set differ in format, size or JPEG quality (e.g. GenImage's and "
    "Community Forensics' JPEG reals beside PNG fakes; Ricker et al.'s LSUN reals, stored "
    "lossy before they were rebuilt as PNG). Compare the real and fake rows above; "
    "`data.format_control` re-encodes every image of every dataset as JPEG of one quality "
    "to test whether a result survives without that cue.")


def _main_format(g: pd.DataFrame) -> tuple[str, float]:
    """The most frequent format of a group and its share (``("", nan)`` when unknown)."""
    known = g["format"].dropna().astype(str)
    if known.empty:
        return "", float("nan")
    counts = known.value_counts()
    return str(counts.index[0]), float(counts.iloc[0] / len(known))


def format_audit(manifests: pd.DataFrame) -> list[str]:
    """One line per dataset and split whose reals and fakes differ in their main file
    format (the data card's format audit), or one line saying none does."""
    lines = []
    for (ds, split), m in manifests.groupby(["dataset", "split"], sort=False):
        real, fake = (m[m["label"].astype(int) == k].drop_duplicates("sha1") for k in (0, 1))
        if real.empty or fake.empty:
            continue
        (rf, rs), (ff, fs) = _main_format(real), _main_format(fake)
        if rf and ff and rf != ff:
            lines.append(f"Format audit: {ds} {split}: reals {100 * rs:.0f}% {rf}, fakes "
                         f"{100 * fs:.0f}% {ff}; a detector may separate them by format "
                         "alone (data.format_control).")
    return lines or ["Format audit: in every dataset and split, reals and fakes share their "
                     "main file format."]


def read_manifests(paths: Sequence[str | os.PathLike]
                   ) -> tuple[pd.DataFrame, dict[str, set[str]]]:
    """(every manifest's rows with a ``dataset`` column, dataset -> its columns).

    The dataset is the manifest's folder name (``<root>/<dataset>/manifest.parquet``).
    """
    import pyarrow.parquet as pq

    frames, present = [], {}
    for p in paths:
        names = pq.read_schema(p).names
        missing = [c for c in BASE if c != "path" and c not in names]
        if missing:
            raise DataError(f"{p}: not a manifest, lacks {', '.join(missing)}")
        cols = [c for c in BASE + EXTRA if c in names and c != "path"]
        df = pd.read_parquet(p, columns=cols)
        for c in EXTRA:
            if c not in df.columns:
                df[c] = np.nan
        df.insert(0, "dataset", Path(p).parent.name)
        present[Path(p).parent.name] = set(names)
        frames.append(df)
    if not frames:
        empty = pd.DataFrame(columns=["dataset", *[c for c in BASE if c != "path"], *EXTRA])
        return empty, present
    return pd.concat(frames, ignore_index=True), present


def real_sets(spec: dict[str, Any], manifests: pd.DataFrame
              ) -> dict[str, tuple[str, int | None, frozenset[str] | None]]:
    """Test generator -> (description, unique real test images, their sha1s) for notes."""
    described = spec.get("real_sets") or {}
    test = manifests[(manifests["split"] == "test") & (manifests["label"] == 0)]
    out = {}
    for g in spec["test"]:
        sha = test.loc[test["generator"] == g, "sha1"]
        desc = described.get(g, "not stated")
        out[g] = (desc, sha.nunique(), frozenset(sha)) if len(sha) else (desc, None, None)
    return out


def _shares(col: pd.Series) -> tuple[str, str]:
    """(display, csv) of the value shares of a categorical column; n/a when unknown."""
    known = col.dropna().astype(str)
    if known.empty:
        return "n/a", ""
    counts = known.value_counts()
    text = [f"{k}" if len(counts) == 1 else f"{k} {100 * v / len(known):.0f}%"
            for k, v in counts.items()]
    unknown = len(col) - len(known)
    if unknown:
        text.append(f"n/a {100 * unknown / len(col):.0f}%")
    return ", ".join(text), ";".join(f"{k}:{v}" for k, v in counts.items())


def _stats(values: pd.Series) -> tuple[float, float, float]:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return (np.nan, np.nan, np.nan)
    return float(v.min()), float(v.median()), float(v.max())


def _stat_text(s: tuple[float, float, float], absent: str) -> str:
    if np.isnan(s[0]):
        return absent
    return " / ".join(f"{x:g}" for x in s)


def _summary(g: pd.DataFrame, columns: set[str]) -> dict[str, Any]:
    w, h = (pd.to_numeric(g[c], errors="coerce") for c in ("width", "height"))
    short, long = _stats(np.minimum(w, h)), _stats(np.maximum(w, h))
    q = _stats(g["jpeg_quality"])
    fmt, fmt_csv = _shares(g["format"])
    mode, mode_csv = _shares(g["mode"])
    sizes = "n/a" if not {"width", "height"} <= columns else None
    quality = "n/a" if "jpeg_quality" not in columns else "-"  # "-": no JPEG in the group
    return {"images": len(g), "unique": g["sha1"].nunique(), "formats": fmt,
            "formats_csv": fmt_csv, "modes": mode, "modes_csv": mode_csv,
            "short": short, "long": long, "quality": q,
            "short_text": sizes or _stat_text(short, "n/a"),
            "long_text": sizes or _stat_text(long, "n/a"),
            "quality_text": _stat_text(q, quality)}


def _order(values: Sequence[str], first: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(values))
    return [v for v in first if v in present] + sorted(v for v in present if v not in first)


def data_card(ctx: Context, manifests: pd.DataFrame, present: dict[str, set[str]]) -> Table:
    """Dataset x split x class x generator summary, plus all-generator rows per class."""
    rows, data = [], []
    gen_order = list(dict.fromkeys(ctx.test + ctx.train))
    for ds in list(dict.fromkeys(manifests["dataset"])):
        m = manifests[manifests["dataset"] == ds]
        for split in _order(m["split"].astype(str), SPLITS):
            s = m[m["split"].astype(str) == split]
            for label in sorted(set(s["label"].astype(int))):
                c = s[s["label"].astype(int) == label]
                gens = _order(c["generator"].astype(str), gen_order)
                groups = [(g, c[c["generator"].astype(str) == g]) for g in gens]
                if len(gens) > 1:
                    groups.append((ALL_GENERATORS, c))
                for gen, g in groups:
                    x = _summary(g, present.get(ds, set()))
                    rows.append([ds, split, CLASSES.get(label, str(label)), gen,
                                 f"{x['images']:,}", f"{x['unique']:,}", x["formats"],
                                 x["modes"], x["short_text"], x["long_text"],
                                 x["quality_text"]])
                    data.append({"dataset": ds, "split": split,
                                 "class": CLASSES.get(label, str(label)), "generator": gen,
                                 "images": x["images"], "unique": x["unique"],
                                 "formats": x["formats_csv"], "modes": x["modes_csv"],
                                 **{f"{k}_{n}": v for k in ("short", "long", "quality")
                                    for n, v in zip(("min", "median", "max"), x[k],
                                                    strict=True)}})
    columns = [Column("dataset", align="l"), Column("split", align="l"),
               Column("class", align="l"), Column("generator", align="l"),
               Column("images", align="r"), Column("unique", align="r"),
               Column("formats", align="l"), Column("modes", align="l"),
               Column("shorter side min / median / max", align="r"),
               Column("longer side min / median / max", align="r"),
               Column("JPEG quality min / median / max", align="r")]
    frame = pd.DataFrame(data, columns=["dataset", "split", "class", "generator", "images",
                                        "unique", "formats", "modes", "short_min",
                                        "short_median", "short_max", "long_min", "long_median",
                                        "long_max", "quality_min", "quality_median",
                                        "quality_max"])
    caption = [
        "Images per dataset, split, class and generator, from the manifests. images: manifest "
        "rows; unique: distinct files (sha1). A real image shared by several test generators "
        f"is a row of each, so the '{ALL_GENERATORS}' row of a class counts it once under "
        "unique. Sizes in pixels; JPEG quality estimated from the quantisation tables; "
        "- means no JPEG in the group, n/a that the manifest predates the column."
        + ("" if len(manifests) else " No manifest was given to the report."),
        *ctx.common("data_card")]
    return Table("data_card", "Data card.", caption, columns, rows, frame,
                 formats=("csv", "md"), notes=[FORMAT_BIAS, *format_audit(manifests)])


def _formats_text(g: pd.DataFrame) -> str:
    return _shares(g["format"])[0] if len(g) else "-"


def pairing(ctx: Context, manifests: pd.DataFrame) -> Table:
    """Which reals each test set is scored against: per test generator, its dataset, its
    fakes and reals (unique images, formats) and the real set's description."""
    test = manifests[manifests["split"].astype(str) == "test"] if len(manifests) else manifests
    rows, data = [], []
    for t in ctx.test:
        g = test[test["generator"].astype(str) == t] if len(test) else test
        fakes = g[g["label"].astype(int) == 1].drop_duplicates("sha1") if len(g) else g
        reals = g[g["label"].astype(int) == 0].drop_duplicates("sha1") if len(g) else g
        desc, _, sha = ctx.real_sets.get(t, ("not stated", None, None))
        shared = [u for u in ctx.test if u != t and sha is not None
                  and ctx.real_sets.get(u, ("", None, None))[2] == sha]
        ds = ctx.dataset_of(t) or ", ".join(sorted(set(fakes.get("dataset", []))))
        row = {"generator": t, "dataset": ds or "n/a", "fakes": len(fakes),
               "fake_formats": _formats_text(fakes), "reals": len(reals),
               "real_formats": _formats_text(reals), "real_set": desc,
               "same_reals_as": ("every other test set" if len(ctx.test) > 2
                                 and len(shared) == len(ctx.test) - 1
                                 else ", ".join(shared) or "-")}
        data.append(row)
        rows.append([row["generator"], row["dataset"], f"{row['fakes']:,}", row["fake_formats"],
                     f"{row['reals']:,}", row["real_formats"], desc, row["same_reals_as"]])
    columns = [Column("test generator", align="l"), Column("dataset", align="l"),
               Column("fakes", align="r"), Column("fake formats", align="l"),
               Column("reals", align="r"), Column("real formats", align="l"),
               Column("real set", align="l"), Column("same reals as", align="l")]
    caption = ["Pairing of reals with fakes: each test set is its generator's fakes beside the "
               "reals listed; counts are distinct images (sha1) of the manifests' test split. "
               "'same reals as': the test sets scored against exactly the same real images.",
               *ctx.common("pairing")]
    return Table("pairing", "Pairing of real and fake test images.", caption, columns, rows,
                 pd.DataFrame(data), formats=("csv", "md"), notes=format_audit(manifests)
                 if len(manifests) else [])
