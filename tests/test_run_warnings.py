"""Every warning that bears on the results reaches one list: console, report, captions."""

import json

import pandas as pd

from bilora.data.manifest import Entry, build_manifest
from bilora.run_warnings import collect, console_lines


def _png(path, seed):
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), seed, np.uint8)).save(path)


def test_each_kind_of_warning_is_collected(tmp_path):
    ds = tmp_path / "data" / "ricker"
    for i in range(4):
        _png(ds / f"img/{i}.png", i)
    (ds / "img" / "broken.png").write_bytes(b"not a png")
    entries = [Entry(f"img/{i}.png", i % 2, "ADM", "test") for i in range(4)]
    entries.append(Entry("img/broken.png", 1, "ADM", "test"))
    notes = [{"generator": "ADM", "split": "test", "label": 1, "available": 3, "kept": 3,
              "cap": 10},
             {"generator": "ADM", "split": "test", "label": 0, "available": 30, "kept": 10,
              "cap": 10}]  # a capped sample is fine, a short set is not
    build_manifest(ds, entries, max_rejected_fraction=0.5, sampling=notes, progress=False)
    (ds / "digests").mkdir()
    (ds / "digests" / "train.sha1").write_text(
        "abc  MISMATCH expected 10fd255e5669e76b4e9bde93f672733a5dfa92fa\n")
    (ds / "digests" / "test.sha1").write_text("68bd7326113b9cde3cd4eadf1e10e5fca77df751\n")
    model = tmp_path / "results" / "r" / "bilora" / "train=ADM" / "seed=1" / "model"
    model.mkdir(parents=True)
    (model / "detector.json").write_text(json.dumps({"provenance": {
        "feature_cache": "fallback: training applies random augmentation (train.augment)"}}))
    other = tmp_path / "m2"
    other.mkdir()
    (other / "detector.json").write_text(json.dumps({"provenance": {
        "feature_cache": "vision: the deepest frozen point (vision)"}}))
    found = collect([ds / "manifest.parquet"], sorted((ds / "digests").iterdir()),
                    [model, other], max_rejected_fraction=0.5)
    sources = [w["source"] for w in found]
    assert sources == ["data.datasets.ricker: train digest", "data.datasets.ricker: rejected "
                       "images", "data.datasets.ricker: ADM", f"{model.parent}: training"]
    assert "1 images failed to decode" in found[1]["message"] and "20.00%" in found[1]["message"]
    assert "only 3 test fake images of ADM, fewer than the 10" in found[2]["message"]
    assert found[3]["affects"] == [] and found[0]["affects"] == ["*"]
    path = tmp_path / "warnings.json"
    path.write_text(json.dumps(found))
    lines = console_lines(path)
    assert lines[0].startswith("bilora: 4 warning(s)") and len(lines) == 5
    path.write_text("[]")
    assert console_lines(path) == []
    assert len(pd.read_csv(ds / "rejects.csv")) == 1
