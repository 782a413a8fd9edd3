"""Broken images are listed in rejects.csv with a reason; too many of them fail the dataset."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from bilora.data.layouts.canonical import canonical_entries
from bilora.data.manifest import ManifestError, build_manifest, sha1_of_file


def _encoded(fmt: str, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


# name -> (bytes, a phrase its reject reason must hold)
BAD = {
    "truncated.png": (_encoded("PNG", 1)[:3000], "truncated"),
    "truncated.jpg": (_encoded("JPEG", 2)[:1500], "truncated"),
    "truncated.webp": (_encoded("WEBP", 3)[:800], "OSError"),
    "empty.png": (b"", "empty file"),
    "text.png": (b"this is not an image, just text\n", "cannot identify"),
    "random.jpg": (np.random.default_rng(4).bytes(2048), "cannot identify"),
    "header_only.png": (_encoded("PNG", 5)[:40], "cannot identify"),
}


def _dataset(tmp_path, n_good: int = 40):
    src = tmp_path / "data" / "mixed"
    for i in range(n_good):
        label = "0_real" if i % 2 else "1_fake"
        fmt, ext = (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"))[i % 3]
        p = src / "test" / label / f"good_{i:03}.{ext}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_encoded(fmt, 100 + i))
    for name, (data, _) in BAD.items():
        (src / "test" / "1_fake" / name).write_bytes(data)
    return src, canonical_entries(src, src, generator="G")


def test_rejects_list_each_bad_image_with_a_reason(tmp_path):
    src, entries = _dataset(tmp_path)
    assert len(entries) == 40 + len(BAD)
    df = build_manifest(src, entries, max_rejected_fraction=0.5, progress=False).frame()
    rejects = pd.read_csv(src / "rejects.csv")
    assert sorted(os.path.basename(p) for p in rejects.path) == sorted(BAD)
    for row in rejects.itertuples():
        phrase = BAD[os.path.basename(row.path)][1]
        assert phrase.lower() in row.reason.lower(), (row.path, row.reason)
    assert len(df) == 40 and not df.path.str.contains("|".join(BAD)).any()
    assert set(df.label) == {0, 1} and set(df.generator) == {"G"}
    for row in df.head(5).itertuples():
        assert row.sha1 == sha1_of_file(src / row.path)
    assert (src / "manifest.parquet").exists()


def test_too_many_rejects_fail_naming_the_folder_and_key(tmp_path):
    src, entries = _dataset(tmp_path)
    with pytest.raises(ManifestError) as err:
        build_manifest(src, entries, max_rejected_fraction=0.01, progress=False)
    msg = str(err.value)
    assert str(src) in msg and "data.max_rejected_fraction" in msg
    assert f"{len(BAD)} of {40 + len(BAD)}" in msg and "rejects.csv" in msg
    assert not (src / "manifest.parquet").exists()
    assert len(pd.read_csv(src / "rejects.csv")) == len(BAD)  # the reasons are kept


def test_truncated_images_are_not_loaded_leniently():
    import bilora.data.layouts.canonical  # noqa: F401 - importing the data code must not flip it
    import bilora.data.local_sources  # noqa: F401
    import bilora.data.lsun  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("cut", ["no IEND", "bad IDAT crc"])
def test_png_cut_after_pixel_data_is_rejected(tmp_path, cut):
    from bilora.data.manifest import inspect_image

    data = bytearray(_encoded("PNG", 9))
    if cut == "no IEND":
        data = data[:-12]
    else:
        i = data.index(b"IDAT")
        length = int.from_bytes(data[i - 4:i], "big")
        data[i + 4 + length] ^= 0xFF
    p = tmp_path / "x.png"
    p.write_bytes(bytes(data))
    assert inspect_image(p)[0] is not None
