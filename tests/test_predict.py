"""``bilora predict`` on a mixed folder, and each detector's preprocessing recorded."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from bilora.api.detector import create_detector, load_detector, save_detector
from bilora.cli import main
from bilora.kinds.dummy import KIND as DUMMY
from bilora.model_files import read_detector_meta, write_threshold
from bilora.provenance import provenance

GOOD = ["1x1.png", "300x255.png", "7x3.png", "cmyk.jpg", "good.jpg", "good.png", "good.webp",
        "i16.png", "l.png", "la.png", "p.png", "sub/deeper/nested.png"]
BAD = ["not_an_image.png", "truncated.png"]


def _noise(w: int, h: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def mixed_folder(root: Path) -> Path:
    """Good images of every kind, two undecodable ones, a hidden one, a text file."""
    root.mkdir(parents=True)
    rgb = Image.fromarray(_noise(40, 30, 0))
    rgb.save(root / "good.png")
    rgb.save(root / "good.jpg", quality=90)
    rgb.save(root / "good.webp")
    Image.fromarray(_noise(40, 30, 1)[..., 0]).save(root / "l.png")
    rgb.convert("LA").save(root / "la.png")
    rgb.convert("P").save(root / "p.png")
    rgb.convert("CMYK").save(root / "cmyk.jpg")
    i16 = np.random.default_rng(3).integers(0, 65536, (30, 40), dtype="<u2")
    Image.frombytes("I;16", (40, 30), i16.tobytes()).save(root / "i16.png")
    for w, h in ((1, 1), (7, 3), (300, 255)):
        Image.fromarray(_noise(w, h, w)).save(root / f"{w}x{h}.png")
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(_noise(20, 20, 4)).save(root / "sub" / "deeper" / "nested.png")
    Image.fromarray(_noise(20, 20, 5)).save(root / ".hidden.png")
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64, 6)).save(buf, "PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "not_an_image.png").write_text("just text\n")
    (root / "notes.txt").write_text("not an image extension\n")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_data) -> Path:
    """A dummy detector (the kind's tiny section) trained one epoch and saved."""
    import tempfile

    from bilora.data.dataset import ImageTable, load_rows
    from bilora.training import train_detector

    det = create_detector(DUMMY.tiny, seed=0)
    rows = load_rows([tiny_data], "train", ["sim-ProGAN"])
    with tempfile.TemporaryDirectory() as d:
        train_detector(det, ImageTable(rows, det.input_size, fit=det.input_fit),
                       det.cfg["train"], 0, d, "fp", progress=False)
    return save_detector(det.eval(), tmp_path_factory.mktemp("dummy") / "model",
                         provenance(det.cfg))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return mixed_folder(tmp_path_factory.mktemp("mixed") / "images")


def _predict(model: Path, out: Path, *inputs, extra=()) -> int:
    return main(["predict", "--model", str(model), "--out", str(out), "--quiet",
                 *map(str, inputs), *extra])


def _loaded(model: Path, paths: list[str]) -> torch.Tensor:
    """P(fake) of ``paths`` loaded through ImageTable as the scoring steps load images."""
    from bilora.data.dataset import ImageTable

    det = load_detector(model)
    rows = pd.DataFrame({"abspath": paths, "label": 0, "sha1": [
        hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in paths]})
    table = ImageTable(rows, det.input_size, fit=det.input_fit)
    return det.predict_proba(torch.stack([table[i][0] for i in range(len(table))]))


def test_predict_scores_every_decodable_image_and_lists_the_rest(model, folder, tmp_path):
    out = tmp_path / "scores.csv"
    assert _predict(model, out, folder) == 0
    scores = pd.read_csv(out, keep_default_na=False)
    assert list(scores.columns) == ["path", "sha1", "p_fake", "label", "word"]
    assert [os.path.relpath(p, folder) for p in scores.path] == GOOD  # sorted, recursive
    assert not any(".hidden" in p for p in scores.path)
    assert scores.sha1.tolist() == [hashlib.sha1(Path(p).read_bytes()).hexdigest()
                                    for p in scores.path]
    expected = _loaded(model, scores.path.tolist()).numpy()
    assert np.allclose(scores.p_fake.to_numpy(), expected, atol=1e-6)
    assert scores.p_fake.std() > 1e-4  # the images move the scores: the check has teeth
    assert (scores.label == (scores.p_fake >= 0.5)).all()
    assert (scores.word == "").all()  # the dummy kind has no caption word
    skipped = pd.read_csv(f"{out}.skipped.csv")
    assert sorted(os.path.relpath(p, folder) for p in skipped.path) == BAD
    reasons = dict(zip(skipped.path.map(os.path.basename), skipped.reason, strict=True))
    assert "cannot identify image file" in reasons["not_an_image.png"]
    assert reasons["truncated.png"]
    info = json.loads(Path(f"{out}.json").read_text())
    assert info["threshold"] == 0.5 and info["threshold_source"] == "default"
    assert info["images"] == len(GOOD) and info["skipped"] == len(BAD)
    assert info["preprocessing"] == {"fit": "resize", "size": 32, "mean": [0.5] * 3,
                                     "std": [0.5] * 3}
    assert not list(tmp_path.glob("*.tmp"))


def test_threshold_flag_beats_threshold_json_beats_half(model, folder, tmp_path):
    import shutil

    out = tmp_path / "a.csv"
    assert _predict(model, out, folder) == 0
    p = pd.read_csv(out).p_fake
    chosen = float(np.median(p))
    assert ((p >= chosen) != (p >= 0.5)).any()  # the thresholds give other labels
    copy = shutil.copytree(model, tmp_path / "copy")
    write_threshold(copy, chosen, "validation set X, best balanced accuracy")
    out = tmp_path / "b.parquet"
    assert _predict(copy, out, folder) == 0
    scores = pd.read_parquet(out)
    assert (scores.label == (scores.p_fake >= np.float32(chosen))).all()
    meta = pq.read_schema(out).metadata
    assert float(meta[b"threshold"]) == chosen
    assert meta[b"threshold_source"] == b"threshold.json"
    assert meta[b"threshold_chosen_on"] == b"validation set X, best balanced accuracy"
    assert json.loads(meta[b"preprocessing"])["fit"] == "resize"
    out = tmp_path / "c.csv"
    assert _predict(copy, out, folder, extra=["--threshold", "0.9"]) == 0
    scores = pd.read_csv(out)
    assert (scores.label == (scores.p_fake >= 0.9)).all()
    info = json.loads(Path(f"{out}.json").read_text())
    assert info["threshold"] == 0.9 and info["threshold_source"] == "--threshold"


def test_a_list_file_names_images_relative_to_itself(model, folder, tmp_path):
    listing = folder.parent / "list.txt"
    listing.write_text(f"# images to score\n{folder.name}/good.png\n\n"
                       f"{folder / 'sub'}\n{folder.name}/gone.png\n{folder}/good.png\n")
    out = tmp_path / "listed.csv"
    assert _predict(model, out, extra=["--list", str(listing)]) == 0
    scores = pd.read_csv(out)
    assert [Path(p).name for p in scores.path] == ["good.png", "nested.png"]  # once each
    skipped = pd.read_csv(f"{out}.skipped.csv")
    assert skipped.reason.tolist() == ["missing file"]


@pytest.mark.parametrize("content", ["empty", "text", "undecodable"])
def test_nothing_to_score_exits_1_and_writes_nothing(model, tmp_path, capsys, content):
    src = tmp_path / "src"
    src.mkdir()
    if content == "text":
        (src / "readme.txt").write_text("hello")
        (src / "data.bin").write_bytes(b"\0\1")
    if content == "undecodable":
        (src / "a.png").write_text("not a png")
    out = tmp_path / "out" / "scores.csv"
    assert _predict(model, out, src) == 1
    err = capsys.readouterr().err
    assert "bilora predict: error:" in err and str(src) in err
    assert ("decodes" if content == "undecodable" else "no image files") in err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_usage_errors(model, folder, tmp_path, capsys):
    assert _predict(model, tmp_path / "scores.txt", folder) == 2
    assert "--out" in capsys.readouterr().err
    assert _predict(model, tmp_path / "s.csv", folder, extra=["--threshold", "1.5"]) == 2
    assert _predict(tmp_path, tmp_path / "s.csv", folder) == 1
    assert "detector.json" in capsys.readouterr().err
    assert _predict(model, tmp_path / "s.csv", tmp_path / "missing") == 1
    bad = tmp_path / "bad_threshold"
    bad.mkdir()
    for f in model.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "threshold.json").write_text('{"threshold": 2, "chosen_on": "x"}')
    assert _predict(bad, tmp_path / "s.csv", folder) == 1
    assert "threshold.json" in capsys.readouterr().err
    assert not list(tmp_path.glob("s.csv*"))


def test_threshold_json_is_not_part_of_the_model_fingerprint(model, tmp_path):
    import shutil

    from bilora.model_files import model_fingerprint

    copy = shutil.copytree(model, tmp_path / "m")
    before = model_fingerprint(copy)
    write_threshold(copy, 0.3, "val")
    assert model_fingerprint(copy) == before


def test_saved_model_and_its_scores_carry_the_preprocessing(model, tiny_data, tmp_path):
    meta = read_detector_meta(model)
    assert meta["preprocessing"] == load_detector(model).preprocessing()
    spec = {"detector_id": "d", "eval": {"batch_size": 8}, "test_generators": ["sim-ProGAN"],
            "seed": 0, "perturbations": {"none": ["-"]}, "protocol": "corrected",
            "device": "cpu", "jpeg_quality": None}
    out = tmp_path / "scores.parquet"
    assert main(["score", "--spec", json.dumps(spec), "--model", str(model), "--manifest",
                 str(tiny_data), "--train-generator", "sim-ProGAN", "--seed", "0", "--out",
                 str(out), "--quiet"]) == 0
    recorded = json.loads(pq.read_schema(out).metadata[b"preprocessing"])
    assert recorded == meta["preprocessing"]
    from bilora.report.context import read_preprocessing

    assert read_preprocessing([out]) == ({"d": recorded}, [])


def test_a_model_saved_before_preprocessing_was_recorded_still_loads(model, folder,
                                                                      tmp_path):
    import shutil

    old = shutil.copytree(model, tmp_path / "old")
    meta = json.loads((old / "detector.json").read_text())
    del meta["preprocessing"]
    (old / "detector.json").write_text(json.dumps(meta))
    assert load_detector(old).preprocessing()["size"] == 32
    out = tmp_path / "s.csv"
    assert _predict(old, out, folder / "good.png") == 0
    assert json.loads(Path(f"{out}.json").read_text())["preprocessing"]["size"] == 32


def test_bilora_predict_writes_the_caption_word(tiny_base, tiny_data, default_cfg, tmp_path):
    """A tiny Bi-LoRA trained briefly: its word is real/fake and agrees with P(fake)."""
    import shutil
    import tempfile

    from bilora.data.dataset import ImageTable, load_rows
    from bilora.training import train_detector

    cfg = {**default_cfg["detectors"]["bilora"],
           "train": {**default_cfg["detectors"]["bilora"]["train"], "epochs": 3,
                     "batch_size": 16, "lr": 3e-3}}
    det = create_detector(cfg, seed=0, base_dir=str(tiny_base))
    rows = load_rows([tiny_data], "train", ["sim-ProGAN"])
    with tempfile.TemporaryDirectory() as d:
        train_detector(det, ImageTable(rows, det.input_size), cfg["train"], 0, d, "fp",
                       progress=False)
    model = save_detector(det.eval(), tmp_path / "model")
    saved = read_detector_meta(model)["preprocessing"]
    assert saved["fit"] == "resize" and saved["size"] == det.input_size
    assert len(saved["mean"]) == 3 and len(saved["std"]) == 3 and saved["resize"]
    images = tmp_path / "images"
    test = load_rows([tiny_data], "test", ["sim-ProGAN", "sim-LDM"]).drop_duplicates("abspath")
    for i, p in enumerate(test.abspath):
        (images / str(i % 3)).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, images / str(i % 3) / f"{i:03d}{Path(p).suffix}")
    out = tmp_path / "scores.parquet"
    assert _predict(model, out, images, extra=["--batch-size", "7"]) == 0
    scores = pd.read_parquet(out)
    assert len(scores) == len(test)
    assert set(scores.word) == {"real", "fake"}  # both answered: the check has teeth
    assert (scores.word == np.where(scores.p_fake >= 0.5, "fake", "real")).all()
    expected = _loaded(model, scores.path.tolist()).numpy()
    assert np.allclose(scores.p_fake.to_numpy(), expected, atol=1e-5)
