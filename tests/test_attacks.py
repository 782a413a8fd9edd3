"""The attack axis: config checks, the seeded subset, white-box FGSM / PGD through the real
adversarial-robustness-toolbox on a trained tiny detector (eps kept in saved uint8 PNGs,
accuracy lowered), transfer with the source's fingerprints, and the report's numbers."""

from __future__ import annotations

import copy
import hashlib
import json
import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bilora import config as C
from bilora.attacks import plan
from bilora.attacks.subset import attack_subset
from bilora.errors import ConfigError

DUMMY = {"kind": "dummy", "image_size": 48, "eval": {"batch_size": 32},
         "train": {"epochs": 12, "batch_size": 16, "lr": 2e-2}}


# -- config -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, eps", [("8/255", 8 / 255), (" 2 / 255", 2 / 255), (0.5, 0.5),
                                        (1, 1.0)])
def test_eps_forms(value, eps):
    assert plan.parse_eps(value, "k") == pytest.approx(eps)


@pytest.mark.parametrize("value", [0, -0.1, 1.5, "300/255", "eight", None, True])
def test_bad_eps_is_a_config_error_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"evaluation\.attacks\.pgd\.eps\[0\]"):
        plan.grid({"pgd": {"eps": [value], "steps": 3}})


def _with_attacks(cfg, **attacks):
    cfg = copy.deepcopy(cfg)
    cfg["evaluation"]["attacks"] = {**cfg["evaluation"]["attacks"], **attacks}
    return cfg


def test_the_embedded_grid(default_cfg):
    steps = plan.grid(default_cfg["evaluation"]["attacks"])
    assert [s["name"] for s in steps] == ["fgsm=2", "fgsm=8", "pgd=2", "pgd=8"]
    pgd8 = steps[-1]
    assert pgd8["steps"] == 5 and pgd8["step_size"] == pytest.approx(2 / 255)
    assert {c.detector for c in plan.attacked_cells(default_cfg)} == {
        "bilora", "resnet50", "xception"}
    assert {c.train for c in plan.attacked_cells(default_cfg)} == {"sim-LDM"}
    targets = plan.transfer_cells(default_cfg)
    assert sorted(c.detector for c in targets) == ["bilora", "xception"]
    assert all([s.detector for s in src] == ["resnet50"] for src in targets.values())


def test_steps_below_one_and_duplicates_are_refused(cfg):
    with pytest.raises(ConfigError, match=r"pgd\.steps"):
        plan.check(_with_attacks(cfg, pgd={"eps": ["2/255"], "steps": 0}))
    with pytest.raises(ConfigError, match="listed twice"):
        plan.check(_with_attacks(cfg, fgsm={"eps": ["2/255", 2 / 255]}))


def test_generate_readout_cannot_be_attacked_white_box(cfg):
    cfg["detectors"]["bilora"]["readout"] = "generate"
    notes = plan.check(cfg)  # detectors: null -> left out, said in a line
    assert any("bilora is not attacked white-box" in n and "readout" in n for n in notes)
    assert "bilora" not in plan.white_box_detectors(cfg)
    assert "bilora" in {c.detector for c in plan.transfer_cells(cfg)}  # it still scores
    with pytest.raises(ConfigError, match=r"detectors\.bilora\.readout"):
        plan.check(_with_attacks(cfg, detectors=["bilora", "resnet50"]))


def test_what_this_config_lacks_is_a_note_and_attacks_nothing(cfg):
    # an overlay on the default keeps the default's train and transfer.sources: a generator
    # or source this config lacks is left out with a line naming the key, not a failed DAG
    spec = _with_attacks(cfg, detectors=["resnet50"], transfer={"sources": ["xception"]})
    notes = plan.check(spec)
    assert any(n.startswith("evaluation.attacks.transfer.sources: 'xception' is not attacked")
               for n in notes)
    assert plan.transfer_cells(spec) == {}
    assert {c.detector for c in plan.attacked_cells(spec)} == {"resnet50"}
    gone = _with_attacks(cfg, train=["sim-ProGAN"])
    notes = plan.check(gone)
    assert any(n.startswith("evaluation.attacks.train: 'sim-ProGAN' is not a training "
                            "generator here") for n in notes)
    assert any("no cell is attacked" in n for n in notes)
    assert plan.attacked_cells(gone) == [] and plan.transfer_cells(gone) == {}
    # a detector listed by name is the user's own choice: a wrong one is still an error
    with pytest.raises(ConfigError, match=r"attacks\.detectors.*nope"):
        plan.check(_with_attacks(cfg, detectors=["nope"]))


def test_config_validation_runs_the_attack_checks(cfg):
    bad = _with_attacks(cfg, fgsm={"eps": [2.0]})
    with pytest.raises(ConfigError, match=r"fgsm\.eps\[0\]"):
        C.validate(bad)


# -- the subset ---------------------------------------------------------------------------

def _rows(n_fake: int, n_real: int, gen: str = "g") -> pd.DataFrame:
    sha = [hashlib.sha1(f"{gen}{i}".encode()).hexdigest() for i in range(n_fake + n_real)]
    return pd.DataFrame({"generator": gen, "label": [1] * n_fake + [0] * n_real, "sha1": sha})


def test_subset_is_seeded_balanced_and_order_free(caplog):
    rows = pd.concat([_rows(30, 30, "a"), _rows(3, 40, "b")], ignore_index=True)
    one = attack_subset(rows, 10, seed=1)
    two = attack_subset(rows.sample(frac=1, random_state=0), 10, seed=1)
    assert set(one["sha1"]) == set(two["sha1"])
    a = one[one["generator"] == "a"]
    assert (a["label"] == 1).sum() == 5 and (a["label"] == 0).sum() == 5
    assert set(attack_subset(rows, 10, seed=2)["sha1"]) != set(one["sha1"])
    with caplog.at_level(logging.INFO, logger="bilora.attacks"):
        b = attack_subset(rows, 10, seed=1)
    assert ((b["generator"] == "b") & (b["label"] == 1)).sum() == 3  # the set's 3 fakes
    assert "test set b has 3 fakes" in caplog.text


# -- white-box and transfer on a trained tiny detector ------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    """A dummy detector trained on sim-ProGAN, saved and loaded as a workflow cell is."""
    from bilora.api.detector import create_detector, load_detector, save_detector
    from bilora.data.dataset import ImageTable, load_rows
    from bilora.training import train_detector

    tmp = tmp_path_factory.mktemp("attacked")
    det = create_detector(DUMMY, 0)
    rows = load_rows([tiny_data], "train", ["sim-ProGAN"])
    train_detector(det, ImageTable(rows, 48), det.cfg["train"], 0, tmp / "ckpt", "x",
                   progress=False)
    folder = tmp / "dummy" / "train=sim-ProGAN" / "seed=0" / "model"
    save_detector(det, folder)
    return load_detector(folder), tmp


def _spec(steps, **over):
    spec = {"detector_id": "dummy", "steps": steps, "max_images": 16, "then_jpeg": [75],
            "batch_size": 32, "test_generators": ["sim-ProGAN", "sim-GLIDE"], "seed": 42,
            "device": "cpu", "jpeg_quality": None}
    return {**spec, **over}


@pytest.fixture(scope="module")
def attacked(trained, tiny_data):
    from bilora.attacks.run import attack_cell
    from bilora.data.manifest import load_rows

    det, tmp = trained
    steps = plan.grid({"fgsm": {"eps": ["8/255"]}, "pgd": {"eps": ["2/255", "8/255"],
                                                           "steps": 10}})
    rows = load_rows([tiny_data], "test", ["sim-ProGAN", "sim-GLIDE"])
    out = tmp / "dummy" / "train=sim-ProGAN" / "seed=0" / "attack"
    scores = attack_cell(det, rows, _spec(steps), out, progress=False)
    return scores, out


def _accuracy(frame):
    return float(((frame["p_fake"] >= 0.5) == (frame["label"] == 1)).mean())


def test_attacks_lower_accuracy_within_eps_on_saved_pngs(attacked):
    scores, out = attacked
    own = scores[(scores["test"] == "sim-ProGAN") & (scores["post"] == "none")]
    acc = {a: _accuracy(own[own["attack"] == a.split("@")[0]].loc[
        lambda f, a=a: f["eps"] == (float(a.split("@")[1]) / 255 if "@" in a else 0.0)])
        for a in ("none", "fgsm@8", "pgd@2", "pgd@8")}
    # measured (16 images): clean 1.00, fgsm 8/255 0.00, pgd 2/255 1.00, pgd 8/255 0.00
    assert acc["none"] >= 0.85
    assert acc["pgd@8"] <= acc["none"] - 0.3 and acc["fgsm@8"] <= acc["none"] - 0.2
    assert acc["pgd@8"] <= acc["pgd@2"] + 1e-9
    # 16 images per set: 8 fakes + 8 reals; the sim-GLIDE set shares nothing with ProGAN's fakes
    assert len(own) == 4 * 16
    for row in scores[scores["attack"] != "none"].drop_duplicates("image").itertuples():
        adv = np.asarray(Image.open(out / row.image), dtype=np.int16)
        clean = np.asarray(Image.open(out / f"images/none/{row.sha1}.png"), dtype=np.int16)
        k = round(row.eps * 255)
        assert np.abs(adv - clean).max() <= k, row.image
        assert row.linf == np.abs(adv - clean).max()
        assert hashlib.sha1((out / row.image).read_bytes()).hexdigest() == row.image_sha1


def test_attack_scores_are_those_of_the_saved_files(trained, attacked):
    """The scores come from the PNG round trip (and JPEG 75 after it), not from the floats."""
    import torch

    from bilora.data.perturbations import jpeg

    det, _ = trained
    scores, out = attacked
    pick = scores[(scores["attack"] == "pgd") & (scores["eps"] > 0.02)].drop_duplicates(
        ["image", "post"]).head(6)
    for row in pick.itertuples():
        img = Image.open(out / row.image).convert("RGB")
        if row.post == "jpeg=75":
            img = jpeg(img, 75)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)[None]
        assert float(det.predict_proba(x)[0]) == pytest.approx(row.p_fake, abs=1e-5)
    jp = scores[scores["post"] == "jpeg=75"]
    assert len(jp) == len(scores) / 2


def test_transfer_scores_the_sources_images_with_fingerprints(trained, attacked, tmp_path):
    from bilora.api.detector import create_detector
    from bilora.attacks.run import SCORES, source_fingerprints, transfer_cell

    scores, out = attacked
    other = create_detector({**DUMMY, "image_size": 32}, 7)  # another size: resized on load
    got = transfer_cell(other, [("dummy", out)], batch_size=32, progress=False)
    assert len(got) == len(scores)
    keys = ["test", "sha1", "attack", "eps", "post"]
    both = got.merge(scores, on=keys, suffixes=("", "_source"), validate="one_to_one")
    assert len(both) == len(scores)
    assert (both["image_sha1"] == both["image_sha1_source"]).all()
    assert got["p_fake"].notna().all() and (got["source"] == "dummy").all()
    fp = source_fingerprints([("dummy", out)])
    assert fp == {"dummy": hashlib.sha1((out / SCORES).read_bytes()).hexdigest()}


def test_attack_job_leaves_nothing_on_failure(trained, tiny_data, tmp_path):
    from bilora.attacks.run import attack_cell
    from bilora.data.manifest import load_rows

    det, _ = trained
    rows = load_rows([tiny_data], "test", ["sim-ProGAN"])
    rows.loc[rows.index[0], "sha1"] = "0" * 40  # the manifest no longer matches the file
    steps = plan.grid({"fgsm": {"eps": ["8/255"]}})
    out = tmp_path / "attack"
    with pytest.raises(Exception, match="changed after"):
        attack_cell(det, rows, _spec(steps, max_images=200), out, progress=False)
    assert not out.exists() and not (tmp_path / "attack.tmp").exists()


# -- the report ---------------------------------------------------------------------------

def test_report_numbers_on_known_scores(tmp_path):
    from scipy.stats import binomtest

    from bilora.report.attacks import attack_table, transfer_table, wilson

    # 10 fakes, 10 reals; clean: 8 fakes and 9 reals right; pgd: 2 fakes and 3 reals right
    sha = [f"{i:040d}" for i in range(20)]
    label = [1] * 10 + [0] * 10
    clean = [0.9] * 8 + [0.1] * 2 + [0.1] * 9 + [0.9]
    adv = [0.9] * 2 + [0.1] * 8 + [0.1] * 3 + [0.9] * 7
    base = {"detector": "d", "train": "t", "seed": 0, "test": "g", "post": "none"}
    frame = pd.concat([
        pd.DataFrame({**base, "sha1": sha, "label": label, "attack": "none", "eps": 0.0,
                      "p_fake": clean}),
        pd.DataFrame({**base, "sha1": sha, "label": label, "attack": "pgd", "eps": 8 / 255,
                      "p_fake": adv})], ignore_index=True)
    spec = {"labels": {"d": "D"}, "detectors": ["d"], "threshold": 0.5, "confidence": 0.95}
    table, data = attack_table(frame, spec)
    pgd = data[data["attack"] == "pgd"].iloc[0]
    assert pgd["accuracy"] == pytest.approx(25.0) and pgd["images"] == 20
    # evasion: of the 8 fakes right when clean, 6 turned real; framing: of 9 reals, 6 turned
    assert pgd["evasion"] == pytest.approx(75.0) and pgd["evasion_n"] == 8
    assert pgd["framing"] == pytest.approx(100 * 6 / 9) and pgd["framing_n"] == 9
    ci = binomtest(6, 8).proportion_ci(0.95, method="wilson")
    assert (pgd["evasion_lo"], pgd["evasion_hi"]) == pytest.approx((100 * ci.low,
                                                                    100 * ci.high))
    assert wilson(0, 0, 0.95).missing == "no images"
    assert "8/255" in table.markdown() and "25.0" in table.markdown()
    transfers = frame.assign(source="d", target="e")
    t = transfer_table(transfers, {**spec, "detectors": ["d", "e"]})
    assert list(t.data["accuracy"]) == pytest.approx([85.0, 25.0])


def test_report_cli_writes_every_named_output(attacked, tmp_path):
    from bilora.cli import main
    from bilora.report.attacks import output_names

    _, out = attacked
    spec = {"labels": {}, "detectors": ["dummy"], "threshold": 0.5, "confidence": 0.95}
    assert main(["attack-report", "--spec", json.dumps(spec), "--attacks", str(out),
                 "--tables", str(tmp_path / "t"), "--figures", str(tmp_path / "f")]) == 0
    tables, figures = output_names()
    for name in tables:
        assert (tmp_path / "t" / name).is_file(), name
    for name in figures:
        assert (tmp_path / "f" / name).is_file(), name
    got = pd.read_csv(tmp_path / "t" / "attacks.csv")
    scores = pd.read_parquet(out / "scores.parquet")
    distinct = scores["sha1"].nunique()  # a real in both test sets counts once
    assert set(got["attack"]) == {"none", "fgsm", "pgd"} and (got["images"] == distinct).all()
    assert 16 < distinct <= 32


# -- the detector during an attack --------------------------------------------------------

def _timm_tiny(**kwargs):
    """The timm kind's tiny ResNet (BatchNorm everywhere), dropout before its head."""
    from bilora.api.detector import create_detector
    from bilora.api.kinds import kind

    section = copy.deepcopy(kind("timm").tiny)
    section["model_kwargs"] = {**section["model_kwargs"], **kwargs}
    return create_detector(section, 0)


def _batch(side: int, n: int = 6):
    import torch

    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    return images, torch.tensor([0, 1] * (n // 2))


def test_attack_is_deterministic_and_leaves_the_detector_as_it_was():
    """Twice the same adversarial images (dropout 0.5 in the model: off during the attack);
    BatchNorm's running statistics, the train/eval mode and requires_grad unchanged; no
    parameter holds a gradient afterwards (ART's backward reached the pixels only)."""
    import torch

    from bilora.attacks.white_box import attack_batch

    det = _timm_tiny(drop_rate=0.5)
    det.train()  # the attack must switch it to eval, and back
    det.model.fc.weight.requires_grad_(False)  # a frozen part stays frozen after
    wanted = {n: p.requires_grad for n, p in det.named_parameters()}
    buffers = {n: b.clone() for n, b in det.named_buffers()}
    assert any("running_mean" in n for n in buffers)
    images, labels = _batch(det.input_size)
    steps = plan.grid({"fgsm": {"eps": ["8/255"]}, "pgd": {"eps": ["8/255"], "steps": 3}})
    one = attack_batch(det, images, labels, steps, batch_size=4)
    two = attack_batch(det, images, labels, steps, batch_size=4)
    for name in ("fgsm=8", "pgd=8"):
        assert np.array_equal(one[name], two[name]), name
        assert (one[name] != images.numpy()).any(), name
    for n, b in det.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert det.training  # its mode restored
    assert {n: p.requires_grad for n, p in det.named_parameters()} == wanted
    assert all(p.grad is None for p in det.parameters())


def test_bfloat16_bilora_through_art_stays_within_eps(tiny_base):
    """Bi-LoRA on a bfloat16 tiny base (CPU) through ART: the margin's float32 logits give
    ART float32 gradients; the PNG-ready uint8 images stay within eps and change the score;
    its LoRA keeps requires_grad and gets no gradient."""
    import torch

    from bilora.api.detector import create_detector
    from bilora.api.kinds import kind
    from bilora.attacks.white_box import attack_batch

    section = {**copy.deepcopy(kind("bilora").tiny), "dtype": "bfloat16"}
    det = create_detector(section, 0, base_dir=str(tiny_base)).eval()
    trainable = [p for p in det.parameters() if p.requires_grad]
    assert trainable
    images, labels = _batch(det.input_size, n=4)
    steps = plan.grid({"pgd": {"eps": ["4/255"], "steps": 2}})
    adv = attack_batch(det, images, labels, steps, batch_size=4)["pgd=4"]
    assert adv.dtype == np.uint8 and adv.shape == tuple(images.shape)
    gap = np.abs(adv.astype(np.int16) - images.numpy().astype(np.int16))
    assert 0 < gap.max() <= 4
    before, after = det.predict_proba(images), det.predict_proba(torch.from_numpy(adv))
    assert not torch.equal(before, after)
    assert all(p.requires_grad and p.grad is None for p in trainable)


@pytest.mark.parametrize("over, key", [
    ({"then_jpeg": [75, 90, 75]}, r"then_jpeg: quality listed twice: 75$"),
    ({"pgd": {"eps": ["2/255", "8/255"], "step_size": "4/255", "steps": 3}},
     r"pgd\.step_size: '4/255' is larger than eps '2/255'"),
    ({"fgsm": {"eps": ["8/255", 0.002]}}, r"fgsm\.eps\[1\]: 0\.002 is below 1/255"),
    ({"train": []}, r"attacks\.train: \[\] attacks no cell"),
    ({"detectors": []}, r"attacks\.detectors: \[\] attacks no cell"),
])
def test_configs_that_would_fail_or_mislead_a_job_are_refused(cfg, over, key):
    with pytest.raises(ConfigError, match=key) as err:
        plan.check(_with_attacks(cfg, **over))
    assert "\n" not in str(err.value)


def test_no_attackable_detector_is_a_note_and_no_sources_is_no_transfer(cfg):
    only = {"bilora": {**cfg["detectors"]["bilora"], "readout": "generate"}}
    none = _with_attacks({**cfg, "detectors": only})
    notes = plan.check(none)
    assert any(n.startswith("evaluation.attacks: no detector here can be attacked white-box "
                            "(detectors.bilora.readout") for n in notes)
    assert plan.attacked_cells(none) == [] and plan.transfer_cells(none) == {}
    # step_size equal to eps is allowed (one step reaches the ball's edge)
    assert plan.grid({"pgd": {"eps": ["2/255"], "step_size": "2/255", "steps": 1}})
    no_sources = _with_attacks(cfg, transfer={"sources": []})
    assert plan.check(no_sources) == [] and plan.transfer_cells(no_sources) == {}
    assert plan.attacked_cells(no_sources) == plan.attacked_cells(cfg)


def _image_rows(folder, sizes_labels, gen):
    """Rows of PNG files of the given (width, height, label), as load_rows gives them."""
    rng = np.random.default_rng(len(gen))
    rows = []
    for i, (w, h, label) in enumerate(sizes_labels):
        path = folder / f"{gen}-{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        rows.append({"generator": gen, "label": label, "abspath": str(path),
                     "sha1": hashlib.sha1(path.read_bytes()).hexdigest(),
                     "manifest": "test rows"})
    return pd.DataFrame(rows)


def test_attack_cell_edge_cases_crop_sizes_odd_max_one_class(tmp_path, caplog):
    """A crop detector on images of other sizes attacks (and saves) its 48-px crop; an odd
    max_images; a test set without fakes; then transfer to a 32-px resize detector."""
    from bilora.api.detector import create_detector
    from bilora.attacks.run import attack_cell, transfer_cell

    det = create_detector(DUMMY, 0).eval()

    class CropDummy(type(det)):
        @property
        def input_fit(self):
            return "crop"

    det.__class__ = CropDummy
    mixed = [(40, 40, 1), (64, 80, 1), (48, 48, 1), (100, 60, 0), (30, 50, 0), (48, 48, 0)]
    rows = pd.concat([_image_rows(tmp_path, mixed, "a"),
                      _image_rows(tmp_path, [(56, 56, 0)] * 4, "reals-only")],
                     ignore_index=True)
    steps = plan.grid({"fgsm": {"eps": ["8/255"]}, "pgd": {"eps": ["4/255"], "steps": 2}})
    out = tmp_path / "attack"
    spec = _spec(steps, max_images=5, batch_size=4, then_jpeg=[],
                 test_generators=["a", "reals-only"])
    with caplog.at_level(logging.INFO, logger="bilora.attacks"):
        scores = attack_cell(det, rows, spec, out, progress=False)
    assert "test set reals-only has 0 fakes and 4 reals; its 3 images are attacked" in caplog.text
    clean = scores[scores["attack"] == "none"]
    a = clean[clean["test"] == "a"]
    assert (a["label"] == 1).sum() == 2 and (a["label"] == 0).sum() == 3  # 5: 2 fakes, 3 reals
    assert (clean[clean["test"] == "reals-only"]["label"] == 0).sum() == 3
    assert len(scores) == 3 * 8 and scores["p_fake"].notna().all()
    for row in scores.drop_duplicates("image").itertuples():
        img = np.asarray(Image.open(out / row.image), dtype=np.int16)
        assert img.shape == (48, 48, 3), row.image  # the crop, attacked and saved
        ref = np.asarray(Image.open(out / f"images/none/{row.sha1}.png"), dtype=np.int16)
        assert np.abs(img - ref).max() <= round(row.eps * 255)
    other = create_detector({**DUMMY, "image_size": 32}, 7)  # resize, another size
    got = transfer_cell(other, [("crop", out)], batch_size=4, progress=False)
    assert len(got) == len(scores) and got["p_fake"].notna().all()


def _cell_scores(n: int = 6) -> pd.DataFrame:
    sha = [f"{i:040d}" for i in range(n)]
    frames = [pd.DataFrame({"test": "g", "label": [1, 0] * (n // 2), "sha1": sha,
                            "attack": attack, "eps": eps, "post": "none",
                            "p_fake": [0.9, 0.1] * (n // 2) if attack == "none" else 0.5,
                            "image": [f"images/{attack}/{s}.png" for s in sha],
                            "image_sha1": sha, "linf": 0})
              for attack, eps in (("none", 0.0), ("pgd", 8 / 255))]
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("with_transfer", [True, False])
def test_report_writes_every_output_with_a_transfer_only_detector_or_no_transfer(
        tmp_path, with_transfer):
    """Detector e is never attacked (it only scores d's images); without ``transfer`` the
    transfer table is written empty: the rule declares every file of output_names()."""
    from bilora.report.attacks import output_names, render_attack_report

    folder = tmp_path / "d" / "train=t" / "seed=0" / "attack"
    folder.mkdir(parents=True)
    _cell_scores().to_parquet(folder / "scores.parquet")
    transfers = []
    if with_transfer:
        f = tmp_path / "e" / "train=t" / "seed=0" / "transfer.parquet"
        f.parent.mkdir(parents=True)
        _cell_scores().assign(source="d").assign(target="e").to_parquet(f)
        transfers = [f]
    spec = {"labels": {"d": "D", "e": "E"}, "detectors": ["d", "e"], "threshold": 0.5,
            "confidence": 0.95}
    render_attack_report(spec, [folder], transfers, tmp_path / "t", tmp_path / "f")
    tables, figures = output_names()
    assert all((tmp_path / "t" / n).is_file() for n in tables)
    assert all((tmp_path / "f" / n).is_file() for n in figures)
    attacks = pd.read_csv(tmp_path / "t" / "attacks.csv")
    assert set(attacks["detector"]) == {"d"}
    md = (tmp_path / "t" / "attack_transfer.md").read_text()
    if with_transfer:
        got = pd.read_csv(tmp_path / "t" / "attack_transfer.csv")
        # d's own column (its white-box result) beside e's: the same scores here
        assert set(got["target"]) == {"d", "e"}
        assert list(got.loc[got["target"] == "e", "accuracy"]) == [100.0, 50.0]
        assert list(got.loc[got["target"] == "d", "accuracy"]) == [100.0, 50.0]
        assert "| E" in md or "E |" in md
    else:  # an empty table that says why, its csv with a header
        assert "No transferred images" in md
        assert list(pd.read_csv(tmp_path / "t" / "attack_transfer.csv").columns)[:2] == [
            "source", "target"]


def test_attack_mode_makes_the_detectors_gpu_the_current_one(monkeypatch):
    """ART's estimator moves the model to torch.cuda.current_device(): on a detector on
    cuda:1 the attack runs with cuda:1 current (recorded here without a GPU)."""
    import contextlib

    import torch

    from bilora.attacks import white_box

    entered = []

    @contextlib.contextmanager
    def record(device):
        entered.append(device)
        yield

    class OnGpu1(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        @property
        def device(self):
            return torch.device("cuda:1")

    monkeypatch.setattr(torch.cuda, "device", record)
    det = OnGpu1()
    with white_box.attack_mode(det):
        assert entered == [torch.device("cuda:1")] and not det.w.requires_grad
    assert det.w.requires_grad and det.training
