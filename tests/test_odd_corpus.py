"""Odd images go through organize, train and score under blur, crop, downscale and mixed.

The corpus (1x1, 1 pixel high or wide, 3000x17, grey, 16-bit, CMYK, palette with
transparency, LA, RGBA, animated GIF and WebP, TIFF, BMP, upper-case extensions, a
non-ASCII name) is written by the test, in a CNNDetection-style folder, as real and as
fake images of the test split (the fakes with bytes appended after the image's end, so the
two copies differ), beside ordinary training images.
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bilora.cli import main
from tests.test_odd_images import _build

pytestmark = pytest.mark.slow

PERTURBATIONS = {"none": ["-"], "blur": [3, 9, "random"], "crop": [0.1, "random"],
                 "downscale": [24], "mixed": ["random"], "noise": ["random"],
                 "jpeg": ["random"]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    src = root / "src"
    (root / "build").mkdir()
    cases = _build(root / "build")
    rng = np.random.default_rng(0)
    for i in range(16):  # ordinary training images: fakes carry a checkerboard
        for label, folder in ((0, "0_real"), (1, "1_fake")):
            arr = rng.integers(60, 200, (24, 24, 3)).astype(np.uint8)
            if label:
                arr[::2, ::2] = 255
            p = src / "train" / folder / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(p)
    for folder in ("0_real", "1_fake"):
        (src / "test" / folder).mkdir(parents=True)
        for name, path, _, _ in cases:
            shutil.copy(path, src / "test" / folder / name)
            if folder == "1_fake":  # other bytes, the same image: the same file as real and
                # as fake would be rejected on both sides (a cross-label duplicate)
                with open(src / "test" / folder / name, "ab") as f:
                    f.write(b"\0trailing bytes after the image's end")
    return root, src, [c[0] for c in cases]


def test_odd_images_through_organize_train_and_score(corpus, capsys):
    root, src, names = corpus
    ds = root / "data" / "odd"
    manifest = ds / "manifest.parquet"
    assert main(["organize", "--layout", "canonical", "--source", str(src), "--dataset-dir",
                 str(ds), "--generator", "Odd", "--max-rejected-fraction", "0",
                 "--out", str(manifest), "--quiet"]) == 0
    assert pd.read_csv(ds / "rejects.csv").empty  # every image that decodes is used
    test = pd.read_parquet(manifest).query("split == 'test'")
    assert len(test) == 2 * len(names) and len(names) >= 19
    det = {"kind": "dummy", "image_size": 16, "train": {"epochs": 1, "batch_size": 8,
                                                        "lr": 1e-2}, "eval": {"batch_size": 8}}
    train = {"detector_id": "d", "detector": det, "train_generator": "Odd", "seed": 0,
             "device": "cpu", "jpeg_quality": None}
    model = root / "model"
    assert main(["train", "--spec", json.dumps(train), "--manifest", str(manifest), "--out",
                 str(model), "--checkpoint-dir", str(root / "ckpt"), "--quiet"]) == 0
    for protocol in ("corrected", "ricker"):
        score = {"detector_id": "d", "eval": det["eval"], "test_generators": ["Odd"],
                 "seed": 0, "perturbations": PERTURBATIONS, "protocol": protocol,
                 "device": "cpu", "jpeg_quality": 50}
        out = root / f"scores-{protocol}.parquet"
        assert main(["score", "--spec", json.dumps(score), "--model", str(model),
                     "--manifest", str(manifest), "--train-generator", "Odd", "--seed", "0",
                     "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
        scores = pd.read_parquet(out)
        n_conditions = sum(len(v) for v in PERTURBATIONS.values())
        assert len(scores) == 2 * len(names) * n_conditions
        assert scores.p_fake.notna().all() and scores.p_fake.between(0, 1).all()
