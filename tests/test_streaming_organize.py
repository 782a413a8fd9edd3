"""Organize at GenImage's scale: the published GenImage root in full, a streamed listing,
bottom-k sampling, a manifest written in chunks, and a file under both labels rejected.

Memory staying flat is the benchmark's to show (benchmarks/organize_scale.py), not a
timed test's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bilora.cli import main
from bilora.data.folders import SourceError, iter_image_paths, list_images
from bilora.data.layouts.genimage import PUBLISHED, genimage_entries
from bilora.data.local_sources import organize
from bilora.data.manifest import Entry, sample_stream, sampling_notes

PER_CLASS = 2


def _img(path: Path, n: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(n).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


@pytest.fixture()
def genimage(tmp_path) -> Path:
    """A GenImage root with the eight published folders, PER_CLASS images per class."""
    root = tmp_path / "GenImage"
    n = 0
    for rel in PUBLISHED.values():
        for split in ("train", "val"):
            for i in range(PER_CLASS):
                n += 1
                _img(root / rel / split / "ai" / f"{i}_adm_{n}.PNG", n)
                _img(root / rel / split / "nature" / f"n0144_{n}.JPEG", 1000 + n, "JPEG")
    return root


def _organize(root: Path, dataset: Path, *extra: str) -> int:
    return main(["organize", "--layout", "genimage", "--source", str(root), "--dataset-dir",
                 str(dataset), "--generators", *PUBLISHED, "--max-rejected-fraction", "0",
                 "--out", str(dataset / "manifest.parquet"), "--quiet", *extra])


def test_genimage_in_full_maps_each_published_folder_to_its_id(genimage, tmp_path, capsys):
    dataset = tmp_path / "data" / "genimage"
    assert _organize(genimage, dataset) == 0
    assert f"{8 * 4 * PER_CLASS} images in" in capsys.readouterr().out
    df = pd.read_parquet(dataset / "manifest.parquet")
    counts = df.groupby(["generator", "split", "label"]).size()
    assert set(df.generator) == set(PUBLISHED)
    assert (counts == PER_CLASS).all() and len(counts) == 8 * 4
    for gen, rel in PUBLISHED.items():  # each generator's test set is its own val folder
        rows = df[df.generator == gen]
        assert rows.path.str.startswith(str(genimage / rel) + "/").all()
        test = rows[rows.split == "test"]
        assert test.path.str.contains("/val/").all()
        assert set(test[test.label == 0].format) == {"JPEG"}
        assert set(test[test.label == 1].format) == {"PNG"}
    assert pd.read_csv(dataset / "rejects.csv").empty


def test_a_missing_generator_folder_is_named_with_the_layout(genimage, tmp_path):
    shutil.rmtree(genimage / "VQDM")
    with pytest.raises(SourceError, match=r"GenImage folder missing for VQDM: .*GenImage/VQDM/"
                                          r"imagenet_ai_0419_vqdm \(the genimage layout"):
        genimage_entries(genimage, tmp_path, generators=["SD14", "VQDM"])
    assert list(genimage_entries(genimage, tmp_path, generators=["SD14"]))
    with pytest.raises(SourceError, match="not GenImage's published ones"):
        genimage_entries(genimage, tmp_path, generators=["SDXL"])
    with pytest.raises(SourceError, match="one of --generator .* or --generators"):
        genimage_entries(genimage, tmp_path, generator="SD14", generators=["SD14"])


def test_the_same_bytes_under_both_labels_are_rejected_on_both_sides(genimage, tmp_path,
                                                                     capsys):
    sd = genimage / PUBLISHED["SD14"] / "train"
    real = sorted((sd / "nature").iterdir())[0]
    copy = sd / "ai" / "copied_real.png"
    shutil.copyfile(real, copy)
    dataset = tmp_path / "data" / "genimage"
    assert _organize(genimage, dataset) == 1  # 2 rejected: more than the 0 allowed
    assert "2 of 65 images (3.1%)" in capsys.readouterr().err
    assert not (dataset / "manifest.parquet").exists()
    assert main(["organize", "--layout", "genimage", "--source", str(genimage),
                 "--dataset-dir", str(dataset), "--generators", *PUBLISHED,
                 "--max-rejected-fraction", "0.05", "--out",
                 str(dataset / "manifest.parquet"), "--quiet"]) == 0
    rejects = pd.read_csv(dataset / "rejects.csv").set_index("path")
    assert sorted(rejects.index) == sorted([str(real), str(copy)])
    assert rejects.loc[str(real), "reason"] == f"same bytes as {copy} (labelled fake)"
    assert rejects.loc[str(copy), "reason"] == f"same bytes as {real} (labelled real)"
    df = pd.read_parquet(dataset / "manifest.parquet")
    assert not df.path.isin([str(real), str(copy)]).any()
    assert len(df) == 8 * 4 * PER_CLASS - 1 and df.sha1.is_unique


def test_a_manifest_written_in_chunks_is_the_one_written_at_once(genimage, tmp_path):
    # the same dataset name: it is part of the seeded sample
    one = organize("genimage", genimage, tmp_path / "one" / "gi", 0.0, progress=False,
                   generators=list(PUBLISHED), train_per_class=1, seed=3)
    chunked = organize("genimage", genimage, tmp_path / "chunked" / "gi", 0.0, progress=False,
                       generators=list(PUBLISHED), train_per_class=1, seed=3, chunk_rows=5)
    assert one.rows == chunked.rows == 8 * (2 + 2 * PER_CLASS)
    assert pq.ParquetFile(chunked.path).num_row_groups == -(-chunked.rows // 5)
    assert pq.ParquetFile(one.path).num_row_groups == 1
    pd.testing.assert_frame_equal(one.frame(), chunked.frame())
    assert sampling_notes(one.path) == sampling_notes(chunked.path)
    assert one.counts == chunked.counts and one.counts[("ADM", "train", 1)] == 1


def test_worker_processes_write_the_same_manifest(genimage, tmp_path):
    one = organize("genimage", genimage, tmp_path / "one" / "gi", 0.0, progress=False,
                   generators=["SD14", "ADM"])
    (genimage / PUBLISHED["ADM"] / "val" / "ai" / "broken.png").write_bytes(b"not a png")
    two = organize("genimage", genimage, tmp_path / "two" / "gi", 0.1, progress=False,
                   generators=["SD14", "ADM"], workers=2)
    assert (two.rows, two.rejected) == (one.rows, 1)
    pd.testing.assert_frame_equal(one.frame(), two.frame())
    assert "cannot identify" in pd.read_csv(two.rejects_path).reason[0]


def test_sampling_is_deterministic_seeded_and_order_free():
    entries = [Entry(f"g/{i:04d}.png", 1, "G", "train") for i in range(200)]
    entries += [Entry(f"Real/{i:04d}.png", 0, g, "test") for g in ("A", "B") for i in range(50)]
    caps = {("train", 1): 20, ("test", 0): 7}

    def kept(seed: int, order=lambda xs: xs) -> list[Entry]:
        calls = []

        def make():
            calls.append(1)
            return iter(order(entries))
        stream, notes = sample_stream(make, caps, seed, "d")
        out = list(stream)
        assert len(calls) == 2  # listed twice: rank, then keep
        assert {(n["generator"], n["available"], n["kept"]) for n in notes} == {
            ("G", 200, 20), ("A", 50, 7), ("B", 50, 7)}
        return out

    a, again, other = kept(1), kept(1), kept(2)
    backwards = kept(1, lambda xs: list(reversed(xs)))
    paths = lambda xs: sorted(e.path for e in xs if e.generator == "G")  # noqa: E731
    assert a == again and len(paths(a)) == 20
    assert paths(a) == paths(backwards)  # the listing's order is not part of the draw
    assert paths(a) != paths(other)
    shared = {g: sorted(e.path for e in a if e.generator == g) for g in ("A", "B")}
    assert len(shared["A"]) == 7 and shared["A"] == shared["B"]  # one sample of a shared set
    stream, notes = sample_stream(lambda: iter(entries), {("train", 1): None}, 1, "d")
    assert notes == [] and list(stream) == entries  # no cap: listed once, all kept


def test_streamed_listing_is_the_sorted_listing(tmp_path):
    for rel in ("b/2.png", "b/10.jpg", "a.png", "a/z.webp", "a/b/c.PNG", ".hidden/x.png",
                "a/._x.png", "c/notes.txt", "B.png"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")  # followed once
    got = [Path(p) for p in iter_image_paths(tmp_path)]
    assert got == list_images(tmp_path) == sorted(got)
    assert [p.relative_to(tmp_path).as_posix() for p in got] == [
        "B.png", "a/b/c.PNG", "a/z.webp", "a.png", "b/10.jpg", "b/2.png"]
