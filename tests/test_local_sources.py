"""Mapping user folders (canonical, GenImage, Ricker) onto manifest entries."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

import bilora.data.manifest as manifest_mod
from bilora.data.folders import SourceError, is_image, list_images, parse_split_map
from bilora.data.layouts.canonical import canonical_entries
from bilora.data.layouts.genimage import genimage_entries
from bilora.data.layouts.ricker import ricker_entries
from bilora.data.local_sources import organize
from bilora.data.manifest import Entry, read_manifest

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
           ".tif": "TIFF", ".tiff": "TIFF"}


def put(path: Path, seed: int = 0) -> Path:
    """A tiny valid image in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (seed % 256, 40, 90)).save(
        path, format=FORMATS[path.suffix.lower()])
    return path


def by_key(entries: list[Entry]) -> dict[tuple[str, str, str], list[int]]:
    out: dict[tuple[str, str, str], list[int]] = {}
    for e in entries:
        out.setdefault((Path(e.path).name, e.generator, e.split), []).append(e.label)
    return out


def test_extensions():
    for name in ["a.png", "a.PNG", "b.jpg", "c.JPEG", "d.webp", "e.bmp", "f.tif", "g.TIFF"]:
        assert is_image(name), name
    for name in ["a.txt", "b.png.part", ".hidden.png", "._mac.jpg", "noext"]:
        assert not is_image(name), name


def test_canonical_multi_generator(tmp_path):
    src = tmp_path / "cnndetection"
    put(src / "test/progan/airplane/0_real/r1.png")
    put(src / "test/progan/airplane/1_fake/f1.png")
    put(src / "test/progan/cat/0_real/r2.JPEG")
    put(src / "test/stylegan/0_real/r3.webp")
    put(src / "test/stylegan/1_fake/f3.tif")
    put(src / "test/biggan/1_fake/f4.png")
    (src / "test/progan/airplane/0_real/notes.txt").write_text("not an image")
    (src / "test/progan/loose.png").write_bytes(b"")  # under no 0_real/1_fake: not listed
    entries = canonical_entries(src, tmp_path / "data" / "cnnd",
                                generators=["progan", "stylegan"])
    assert by_key(entries) == {
        ("r1.png", "progan", "test"): [0], ("f1.png", "progan", "test"): [1],
        ("r2.JPEG", "progan", "test"): [0], ("r3.webp", "stylegan", "test"): [0],
        ("f3.tif", "stylegan", "test"): [1]}
    assert all(Path(e.path).is_absolute() and Path(e.path).exists() for e in entries)
    with pytest.raises(SourceError, match=r"\['dalle'\] have no images"):
        canonical_entries(src, tmp_path / "data", generators=["progan", "dalle"])


def test_canonical_single_generator_with_split_map(tmp_path):
    src = tmp_path / "progan_train"
    put(src / "train/airplane/0_real/a.png")
    put(src / "train/airplane/1_fake/b.png")
    put(src / "val/car/0_real/c.png")
    put(src / "val/car/1_fake/d.png")
    entries = canonical_entries(src, tmp_path, generator="ProGAN",
                                split_map={"train": "train", "val": "test"})
    assert by_key(entries) == {("a.png", "ProGAN", "train"): [0],
                               ("b.png", "ProGAN", "train"): [1],
                               ("c.png", "ProGAN", "test"): [0],
                               ("d.png", "ProGAN", "test"): [1]}
    # inside the dataset folder: relative POSIX paths
    assert {e.path for e in entries} >= {"progan_train/train/airplane/0_real/a.png"}
    flat = tmp_path / "flat"
    put(flat / "test/0_real/x.png")
    put(flat / "test/1_fake/y.png")
    with pytest.raises(SourceError, match=r"flat/test holds 0_real/1_fake directly.*generator"):
        canonical_entries(flat, tmp_path)
    assert len(canonical_entries(flat, tmp_path, generator="G")) == 2


def _genimage(root: Path) -> Path:
    sub = root / "stable_diffusion_v_1_4" / "imagenet_ai_0419_sdv4"
    put(sub / "train/ai/1.png")
    put(sub / "train/nature/n01440764_1.JPEG")
    put(sub / "val/ai/2.png")
    put(sub / "val/nature/ILSVRC2012_val_1.JPEG")
    return sub


def test_genimage_layout_and_split_map(tmp_path):
    sub = _genimage(tmp_path / "GenImage")
    entries = genimage_entries(sub.parent, tmp_path / "data" / "sd14", "SD14",
                               parse_split_map("train=train,val=test"))
    assert by_key(entries) == {("1.png", "SD14", "train"): [1],
                               ("n01440764_1.JPEG", "SD14", "train"): [0],
                               ("2.png", "SD14", "test"): [1],
                               ("ILSVRC2012_val_1.JPEG", "SD14", "test"): [0]}
    assert all(e.path.startswith(str(sub)) for e in entries)  # absolute, left in place
    for p in (sub / "val" / "ai").iterdir():
        p.unlink()
    (sub / "val" / "ai").rmdir()
    with pytest.raises(SourceError, match=r"folder missing: .*imagenet_ai_0419_sdv4/val/ai"):
        genimage_entries(sub, tmp_path, "SD14", {"train": "train", "val": "test"})


def test_split_map_parsing():
    assert parse_split_map("train=train, val=test") == {"train": "train", "val": "test"}
    assert parse_split_map({"val": "test"}) == {"val": "test"}
    with pytest.raises(SourceError, match="'val' is not 'source=target'"):
        parse_split_map("train=train,val")
    with pytest.raises(SourceError, match=r"\['testing'\] are not among"):
        parse_split_map("val=testing")


GENS = ["ADM", "DDPM"]


def _ricker(dataset_dir: Path, real_halves: bool = True) -> Path:
    root = dataset_dir / "raw" / "diffusion_model_deepfakes_lsun_bedroom"
    for i in range(3):
        put(root / f"test/Real/{i:08}.png", i)
        for g in GENS:
            put(root / f"test/{g}/{g}_{i}.png", i + 10)
    for split, n in (("train", 3), ("val", 1)):
        for g in GENS:
            for i in range(n):
                put(root / f"{split}/{g}/1_fake/{g}_{i}.png", i + 20)
                if real_halves:
                    put(root / f"{split}/{g}/0_real/{i:08}.png", i + 30)
    return root


def test_ricker_shares_the_real_test_folder(tmp_path, monkeypatch):
    dataset_dir = tmp_path / "data" / "ricker"
    root = _ricker(dataset_dir)
    entries = ricker_entries(dataset_dir / "raw", dataset_dir, GENS)
    test_real = [e for e in entries if e.split == "test" and e.label == 0]
    assert len(test_real) == 3 * len(GENS)
    assert {e.path for e in test_real} == {
        f"raw/diffusion_model_deepfakes_lsun_bedroom/test/Real/{i:08}.png" for i in range(3)}
    assert {e.generator for e in test_real} == set(GENS)
    assert len([e for e in entries if e.split == "train"]) == 2 * 3 * len(GENS)
    assert len([e for e in entries if e.split == "val"]) == 2 * 1 * len(GENS)

    calls: list[str] = []
    real_inspect = manifest_mod.inspect_image
    monkeypatch.setattr(manifest_mod, "inspect_image",
                        lambda p, *a: calls.append(str(p)) or real_inspect(p, *a))
    df = organize("ricker", dataset_dir / "raw", dataset_dir, 0.0, generators=GENS,
                  progress=False).frame()
    shared = df[df.path.str.contains("/test/Real/")]
    assert len(shared) == 6 and set(shared.generator) == set(GENS)
    assert shared.groupby("path").sha1.nunique().eq(1).all()
    assert len(calls) == len(set(calls))  # each shared file decoded (and hashed) once
    assert len(list((root / "test" / "Real").iterdir())) == 3  # nothing copied
    assert read_manifest(dataset_dir / "manifest.parquet").shape[0] == len(entries)


def test_ricker_without_real_halves_says_how_to_make_them(tmp_path):
    dataset_dir = tmp_path / "ricker"
    _ricker(dataset_dir, real_halves=False)
    with pytest.raises(SourceError, match=r"train/ADM/0_real.*bilora rebuild-lsun-real"):
        ricker_entries(dataset_dir / "raw", dataset_dir, GENS)
    test_only = ricker_entries(dataset_dir / "raw", dataset_dir, GENS, splits=["test"])
    assert {e.split for e in test_only} == {"test"}
    with pytest.raises(SourceError, match=r"no test images for LDM in .*test/LDM; present: "
                                          r"\['ADM', 'DDPM', 'Real'\]"):
        ricker_entries(dataset_dir / "raw", dataset_dir, ["LDM"], splits=["test"])


def test_list_images_sorted_and_skips_hidden(tmp_path):
    put(tmp_path / "b/2.png")
    put(tmp_path / "a/1.png")
    put(tmp_path / ".cache/3.png")
    (tmp_path / "a/._1.png").write_bytes(b"\0")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == \
        ["a/1.png", "b/2.png"]
