import numpy as np
import pandas as pd
import pytest

from bilora.data import procedural as P
from bilora.data.manifest import manifest_digest


def _make(tmp_path, seed):
    spec = P.ProceduralSpec(generators=["sim-LDM", "sim-ProGAN"], image_size=32,
                            train_per_class=4, test_per_class=3, seed=seed)
    return P.make_dataset(spec, tmp_path, progress=False)


def test_same_seed_same_manifest_sha1s(tmp_path):
    a = _make(tmp_path / "a", 5)
    b = _make(tmp_path / "b", 5)
    c = _make(tmp_path / "c", 6)
    assert a["sha1"].tolist() == b["sha1"].tolist()
    assert manifest_digest(a) == manifest_digest(b) != manifest_digest(c)


def test_canonical_layout_with_the_real_test_set_stored_once(tmp_path):
    df = _make(tmp_path, 1)
    assert list(df.columns) == ["path", "label", "generator", "split", "sha1", "format", "mode",
                                "width", "height", "jpeg_quality"]
    assert set(df.format) == {"PNG"} and set(df["mode"]) == {"RGB"}
    assert (df.width == 32).all() and df.jpeg_quality.isna().all()
    assert (tmp_path / "train/sim-LDM/0_real/000000.png").exists()
    assert (tmp_path / "train/sim-LDM/1_fake/000003.png").exists()
    assert len(list((tmp_path / "train/sim-ProGAN/1_fake").iterdir())) == 4
    assert len(list((tmp_path / "test/Real").iterdir())) == 3
    assert not (tmp_path / "test/sim-LDM/0_real").exists()
    test = df[df.split == "test"]
    for gen in ("sim-LDM", "sim-ProGAN"):
        reals = test[(test.generator == gen) & (test.label == 0)]
        assert sorted(reals.path) == [f"test/Real/{i:06d}.png" for i in range(3)]
    assert (pd.read_csv(tmp_path / "rejects.csv")).empty


def test_stand_ins_bear_marked_paper_names():
    assert P.stand_in_name("LDM") == "sim-LDM" and P.paper_name("sim-Diff-ProjectedGAN")
    assert len(P.STAND_INS) == 12
    with pytest.raises(KeyError, match="sim-LDM"):
        P.paper_name("LDM")


def _spectrum(images):
    return np.mean([np.abs(np.fft.fft2(im.mean(-1) - im.mean())) for im in images], 0)


def test_artifacts_of_each_family_are_measurable():
    n, s = 12, 64
    real = [P.real_image(np.random.default_rng(i), s) for i in range(n)]
    def fake(g):
        return [P.fake_image(np.random.default_rng(100 + i), s, g) for i in range(n)]
    r = _spectrum(real)
    # GAN: checkerboard -> a peak at the Nyquist frequency (s/2, s/2)
    assert _spectrum(fake("ProGAN"))[s // 2, s // 2] > 5 * r[s // 2, s // 2]
    # diffusion: period-4 peaks from the upsampling path
    assert _spectrum(fake("ADM"))[s // 4, s // 4] > 5 * r[s // 4, s // 4]
    # latent diffusion: jumps at 8-pixel block borders larger than inside blocks
    ldm = np.stack(fake("LDM")).mean(-1)
    d = np.abs(np.diff(ldm, axis=2)).mean((0, 1))
    assert d[7::8].mean() > 2 * np.delete(d, np.s_[7::8]).mean()
