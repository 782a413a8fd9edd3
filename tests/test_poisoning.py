"""Backdoor by data poisoning: the config's variants, the trigger, the poisoned rows, the
trigger condition, the feature cache's key and the backdoor table."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bilora import config as C
from bilora.data import trigger as T
from bilora.data.perturbations import apply, conditions, parse_level
from bilora.errors import ConfigError
from tests.conftest import DEFAULT

TRIGGER = {"kind": "patch", "size": 0.25, "position": "bottom-right", "seed": 7}


def overlay(**poisoning) -> dict:
    spec = {"detectors": ["resnet50"], "fractions": [0.01, 0.1], "trigger": dict(TRIGGER),
            **poisoning}
    given = {"poisoning": spec}
    return C.resolve(given, DEFAULT)


def train_rows(n_real: int, n_fake: int, salt: str = "") -> pd.DataFrame:
    sha = [f"{i:040x}{salt}"[:40] for i in range(n_real + n_fake)]
    return pd.DataFrame({"sha1": sha, "abspath": [f"/x/{s}.png" for s in sha],
                         "label": [0] * n_real + [1] * n_fake})


# -- config ---------------------------------------------------------------------------------

def test_variants_labels_conditions_and_specs():
    cfg = overlay()
    assert [d for d in C.detectors(cfg) if "@" in d] == ["resnet50@poison=0.01",
                                                         "resnet50@poison=0.1"]
    assert C.variants(cfg)["resnet50@poison=0.1"] == {
        "base": "resnet50", "key": "train.poison.fraction", "value": 0.1}
    assert C.labels(cfg)["resnet50@poison=0.01"].endswith(" [poison=0.01]")
    section = C.detectors(cfg)["resnet50@poison=0.1"]
    assert section["train"]["poison"] == {"fraction": 0.1, "trigger": TRIGGER, "target": "real"}
    assert "poison" not in C.detectors(cfg)["resnet50"]["train"]
    assert C.conditions(cfg)[-1] == ("trigger", "patch")
    assert C.score_spec(cfg, "resnet50")["trigger"] == TRIGGER
    spec = C.report_spec(cfg)
    assert spec["backdoor"]["detectors"] == {"resnet50": {"resnet50@poison=0.01": 0.01,
                                                          "resnet50@poison=0.1": 0.1}}
    assert spec["variants"]["resnet50@poison=0.1"]["base_value"] == 0.0
    # without poisoning nothing changes: no trigger condition, no backdoor entry
    plain = C.load(None)
    assert plain["poisoning"] is None
    assert ("trigger", "patch") not in C.conditions(plain)
    assert "trigger" not in C.score_spec(plain, "resnet50")
    assert "backdoor" not in C.report_spec(plain)


def test_trigger_defaults_are_filled_in():
    cfg = overlay(trigger={})
    assert cfg["poisoning"]["trigger"] == {"kind": "patch", "size": 0.125,
                                           "position": "bottom-right", "seed": 0}
    assert cfg["poisoning"]["target"] == "real"


@pytest.mark.parametrize("bad, key", [
    ({"detectors": ["nope"]}, "poisoning.detectors"),
    ({"fractions": [0.0]}, "poisoning.fractions"),
    ({"fractions": [1.0]}, "poisoning.fractions"),
    ({"fractions": [1.5]}, "poisoning.fractions"),
    ({"trigger": {**TRIGGER, "size": 0.6}}, "poisoning.trigger.size"),
    ({"trigger": {**TRIGGER, "size": 0}}, "poisoning.trigger.size"),
    ({"trigger": {**TRIGGER, "position": "middle"}}, "poisoning.trigger.position"),
    ({"target": "fake"}, "poisoning.target"),
])
def test_bad_poisoning_names_the_key(bad, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        overlay(**bad)


def test_an_imported_detector_cannot_be_poisoned():
    given = {"detectors": {"imp": {**copy.deepcopy(C.load_yaml(DEFAULT)["detectors"]["bilora"]),
                                   "weights": {"from": "checkpoints",
                                               "checkpoints": {"sim-LDM": "/nowhere"}}}},
             "poisoning": {"detectors": ["imp"], "fractions": [0.1], "trigger": TRIGGER}}
    with pytest.raises(ConfigError, match="poisoning.detectors: 'imp' imports released"):
        C.resolve(given, DEFAULT)


# -- the poisoned rows ----------------------------------------------------------------------

@pytest.mark.parametrize("fraction, n_real, n_fake", [
    (0.01, 300, 300), (0.1, 300, 300), (0.25, 300, 300), (0.5, 300, 300), (0.013, 77, 123),
    (0.2, 5, 6), (0.3, 100, 50)])
def test_exactly_the_fraction_of_rows_is_poisoned_all_fakes(fraction, n_real, n_fake):
    rows = train_rows(n_real, n_fake)
    poison = {"fraction": fraction, "trigger": TRIGGER, "target": "real"}
    out, mask = T.poison_rows(rows, poison, cell_seed=42)
    want = int(np.floor(fraction * (n_real + n_fake) + 0.5))
    assert mask.sum() == want == T.poison_count(fraction, len(rows))
    assert (rows["label"][mask] == 1).all()  # only fakes
    assert (out["label"][mask] == 0).all()  # relabelled real
    assert (out["label"][~mask] == rows["label"][~mask]).all()
    assert (rows["label"] == [0] * n_real + [1] * n_fake).all()  # the input is untouched


def test_choice_is_seeded_reproducible_and_order_free():
    rows = train_rows(300, 300)
    poison = {"fraction": 0.1, "trigger": TRIGGER, "target": "real"}
    chosen = set(rows["sha1"][T.poisoned(rows, poison, 42)])
    assert chosen == set(rows["sha1"][T.poisoned(rows, poison, 42)])
    shuffled = rows.sample(frac=1, random_state=3).reset_index(drop=True)
    assert chosen == set(shuffled["sha1"][T.poisoned(shuffled, poison, 42)])
    other_cell = set(rows["sha1"][T.poisoned(rows, poison, 43)])
    other_trigger = {**poison, "trigger": {**TRIGGER, "seed": 8}}
    other_seed = set(rows["sha1"][T.poisoned(rows, other_trigger, 42)])
    assert other_cell != chosen and other_seed != chosen
    assert len(other_cell) == len(other_seed) == 60
    # a larger fraction keeps the smaller one's images (one ranking)
    more = set(rows["sha1"][T.poisoned(rows, {**poison, "fraction": 0.2}, 42)])
    assert chosen < more


def test_too_few_fakes_is_an_error():
    rows = train_rows(90, 10)
    with pytest.raises(ConfigError, match="only 10 are fake"):
        T.poisoned(rows, {"fraction": 0.2, "trigger": TRIGGER, "target": "real"}, 1)


# -- the patch ------------------------------------------------------------------------------

@pytest.mark.parametrize("w, h, size, position, box", [
    (48, 48, 0.25, "bottom-right", (36, 36, 48, 48)),
    (48, 48, 0.125, "top-left", (0, 0, 6, 6)),
    (64, 40, 0.25, "top-right", (54, 0, 64, 10)),
    (64, 40, 0.25, "bottom-left", (0, 30, 10, 40)),
    (64, 40, 0.5, "center", (22, 10, 42, 30)),
    (3, 3, 0.1, "bottom-right", (2, 2, 3, 3)),  # at least one pixel
])
def test_patch_pixels_are_exactly_where_configured(w, h, size, position, box):
    trig = {"kind": "patch", "size": size, "position": position, "seed": 3}
    assert T.box(trig, w, h) == box
    rng = np.random.default_rng(0)
    arr = rng.integers(1, 255, (h, w, 3), dtype=np.uint8)  # never exactly 0 or 255
    out = np.asarray(T.stamp(Image.fromarray(arr), trig))
    left, top, right, bottom = box
    inside = np.zeros((h, w), bool)
    inside[top:bottom, left:right] = True
    assert (out[~inside] == arr[~inside]).all()
    assert set(np.unique(out[inside])) <= {0, 255}
    assert (out[inside] == T.pattern(trig, right - left).reshape(-1, 3)).all()


def test_pattern_is_seeded_and_not_flat():
    a, b = T.pattern(TRIGGER, 16), T.pattern(TRIGGER, 16)
    assert (a == b).all()
    assert 0 < (a[..., 0] == 255).mean() < 1
    assert not (T.pattern({**TRIGGER, "seed": 8}, 16) == a).all()
    # the same 8 x 8 cells at every side: scaled, not redrawn
    assert (T.pattern(TRIGGER, 32)[::4, ::4] == T.pattern(TRIGGER, 8)).all()


def test_trigger_condition_stamps_the_run_trigger():
    assert conditions({"none": ["-"], "trigger": ["patch"]}) == [("none", "-"),
                                                                  ("trigger", "patch")]
    assert parse_level("patch") == "patch"
    img = Image.fromarray(np.full((48, 48, 3), 128, np.uint8))
    for protocol in ("ricker", "corrected"):
        out = apply(img, "trigger", "patch", 0, "ab" * 20, protocol, trigger=TRIGGER)
        assert (np.asarray(out) == np.asarray(T.stamp(img, TRIGGER))).all()
    with pytest.raises(ValueError, match="needs the run's trigger"):
        apply(img, "trigger", "patch", 0, "ab" * 20)


def test_image_table_stamps_only_the_flagged_rows(tmp_path):
    import hashlib

    from bilora.data.dataset import ImageTable, Perturbation

    paths, sha = [], []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 40, 3), 100 + i, np.uint8)).save(p)
        paths.append(str(p))
        sha.append(hashlib.sha1(p.read_bytes()).hexdigest())
    rows = pd.DataFrame({"abspath": paths, "sha1": sha, "label": [1, 1, 0]})
    table = ImageTable(rows, 20, trigger=TRIGGER, stamped=[False, True, False])
    plain = np.asarray(table.image(0))
    assert (plain == 100).all()
    stamped = np.asarray(table.image(1))
    assert (stamped[30:, 30:] == T.pattern(TRIGGER, 10)).all()
    assert (stamped[:30] == 101).all()
    test = ImageTable(rows, 20, Perturbation("trigger", "patch", 0, "corrected", TRIGGER))
    assert (np.asarray(test.image(2))[30:, 30:] == T.pattern(TRIGGER, 10)).all()
    assert test[0][0].shape == (3, 20, 20)


# -- the frozen-feature cache never serves a poisoned cell the clean features ---------------

@pytest.mark.slow
def test_feature_cache_of_a_poisoned_cell_is_its_own(default_cfg, tiny_base, tiny_data,
                                                     tmp_path):
    from bilora.data.dataset import ImageTable, load_rows
    from bilora.feature_cache import prepare
    from bilora.kinds.bilora.detector import BiLoRADetector

    cfg = copy.deepcopy(default_cfg["detectors"]["bilora"])
    det = BiLoRADetector.build(cfg, 0, str(tiny_base))
    rows = load_rows([tiny_data], "train", ["sim-LDM"])
    poison = {"fraction": 0.1, "trigger": TRIGGER, "target": "real"}
    prows, mask = T.poison_rows(rows, poison, 42)
    key = {**poison, "stamped": prows["sha1"][mask].tolist()}
    clean = prepare(det, ImageTable(rows, det.input_size), rows, None, tmp_path, False,
                    progress=False)
    bad = prepare(det, ImageTable(prows, det.input_size, trigger=TRIGGER, stamped=mask),
                  prows, None, tmp_path, False, progress=False, poison=key)
    assert clean.file is not None and bad.file is not None and clean.file != bad.file
    other = prepare(det, ImageTable(prows, det.input_size, trigger=TRIGGER, stamped=mask),
                    prows, None, tmp_path, False, progress=False,
                    poison={**key, "trigger": {**TRIGGER, "seed": 8}})
    assert other.file not in (clean.file, bad.file)
    a = np.load(clean.file)
    b = np.load(bad.file)
    assert np.array_equal(a[~mask], b[~mask])  # the clean rows' features agree
    assert not np.allclose(a[mask], b[mask])  # the stamped rows' do not
    assert [bad.dataset[i][1] for i in np.flatnonzero(mask)] == [0] * int(mask.sum())


# -- the backdoor table on hand-made scores with a known answer -----------------------------

N = 40
BD_TEST = ["G1", "G2", "G3"]
# fakes called real under the trigger, per detector (of N per test set); clean: fakes right
MISSED = {"rn": 4, "rn@poison=0.1": 36}
CLEAN_FAKES_OK = {"rn": 38, "rn@poison=0.1": 36}


def _bd_scores(path, det):
    import pyarrow as pa
    import pyarrow.parquet as pq

    frames = []
    for t in BD_TEST:
        for pert, level in (("none", "-"), ("trigger", "patch")):
            ok = CLEAN_FAKES_OK[det] if pert == "none" else N - MISSED[det]
            pf = np.r_[np.full(ok, 0.9), np.full(N - ok, 0.1)]
            pr = np.r_[np.full(36, 0.1), np.full(N - 36, 0.9)]  # reals: 36 right
            frames.append(pd.DataFrame({
                "sha1": [f"{t}f{i}" for i in range(N)] + [f"r{i}" for i in range(N)],
                "generator": t, "label": np.r_[np.ones(N), np.zeros(N)].astype("int8"),
                "perturbation": pert, "level": level, "p_fake": np.r_[pf, pr].astype("float32")}))
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
    meta = {b"detector": det.encode(), b"train": b"G1", b"seed": b"0"}
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, **meta}), path)


def test_backdoor_table_known_answer(tmp_path):
    from bilora.metrics import run_metrics
    from bilora.report import render_report, report_outputs

    scores = []
    for det in MISSED:
        p = tmp_path / f"{det}.parquet"
        _bd_scores(p, det)
        scores.append(p)
    run_metrics(scores, tmp_path / "metrics.parquet", resamples=200)
    spec = {"run": "t", "train": ["G1"], "test": BD_TEST,
            "labels": {"rn": "RN", "rn@poison=0.1": "RN [poison=0.1]"},
            "note": "Hand-made scores.", "threshold": 0.5, "confidence": 0.95, "seeds": [0],
            "variants": {"rn@poison=0.1": {"base": "rn", "key": "train.poison.fraction",
                                           "value": 0.1, "base_value": 0.0}},
            "real_sets": {t: "shared reals" for t in BD_TEST}, "published": None,
            "format_control": None, "protocol": "ricker",
            "backdoor": {"detectors": {"rn": {"rn@poison=0.1": 0.1}},
                         "condition": ["trigger", "patch"], "trigger": TRIGGER,
                         "target": "real"}}
    assert "backdoor.csv" in report_outputs(spec)[0]
    paths = render_report(tmp_path / "metrics.parquet", tmp_path / "bootstrap.npz", spec,
                          tmp_path / "tables", tmp_path / "figures", scores=scores)
    assert {p.name for p in paths} >= {"backdoor.csv", "backdoor.md", "backdoor.tex"}
    t = pd.read_csv(tmp_path / "tables" / "backdoor.csv").set_index("detector")
    assert list(t.index) == ["rn", "rn@poison=0.1"]
    assert list(t["fraction"]) == [0.0, 0.1]
    for det in MISSED:
        r = t.loc[det]
        acc = 100 * (CLEAN_FAKES_OK[det] + 36) / (2 * N)
        assert r["clean_accuracy_value"] == pytest.approx(acc)
        assert r["clean_accuracy_n"] == 3 * 2 * N
        for col in ("asr_G1_", "asr_G2_", "asr_G3_", "asr_unseen_"):
            assert r[f"{col}value"] == pytest.approx(100 * MISSED[det] / N)
            assert r[f"{col}lo"] <= r[f"{col}value"] <= r[f"{col}hi"]
            assert r[f"{col}hi"] - r[f"{col}lo"] > 0
        assert r["clean_missed_unseen_value"] == pytest.approx(
            100 * (N - CLEAN_FAKES_OK[det]) / N)
        assert r["asr_G2_n"] == N and r["asr_unseen_n"] == 2 * N  # G1 is the seen set
    md = (tmp_path / "tables" / "backdoor.md").read_text()
    assert "RN [poison=0.1]" in md and "G2 (n=40)" in md and "90.0 [" in md
    rob = pd.read_csv(tmp_path / "tables" / "robustness_accuracy.csv")
    assert set(rob["perturbation"]) == {"none", "trigger"}
