import numpy as np
import pytest
from PIL import Image

from bilora.data import perturbations as P


@pytest.fixture()
def img():
    rng = np.random.default_rng(1)
    base = np.kron(rng.uniform(0, 255, (16, 16, 3)), np.ones((4, 4, 1)))
    return Image.fromarray(base.astype(np.uint8))


def arr(im):
    return np.asarray(im, dtype=float)


def test_noise_has_the_requested_std_and_is_seeded_per_image(img):
    a = P.apply(img, "noise", 10, seed=0, sha1="x")
    b = P.apply(img, "noise", 10, seed=0, sha1="x")
    c = P.apply(img, "noise", 10, seed=0, sha1="y")
    assert np.array_equal(arr(a), arr(b)) and not np.array_equal(arr(a), arr(c))
    assert (arr(a) - arr(img)).std() == pytest.approx(10, rel=0.1)


def test_stronger_levels_degrade_more(img):
    def err(kind, level):
        return np.abs(arr(P.apply(img, kind, level, 0, "s")) - arr(img)).mean()

    assert err("jpeg", 10) > err("jpeg", 75) > 0
    assert err("blur", 9) > err("blur", 3) > 0
    assert err("crop", 0.2) > err("crop", 0.05) > 0
    assert err("downscale", 16) > err("downscale", 48) > 0


def test_geometry_is_kept(img):
    for kind, level in [("crop", 0.1), ("downscale", 20), ("jpeg", 30), ("mixed", "random")]:
        assert P.apply(img, kind, level, 0, "s").size == img.size


def test_random_levels_are_drawn_per_image_in_rickers_ranges(img):
    levels = {P._random_level("jpeg", P.image_rng(0, str(i), "jpeg", "random"))
              for i in range(200)}
    assert min(levels) >= 10 and max(levels) < 75 and len(levels) > 30
    assert P._random_level("blur", np.random.default_rng(0)) in (3, 5, 7, 9)


def test_clean_is_identity_and_unknown_kinds_fail(img):
    assert P.apply(img, "none", "-", 0, "s") is img
    with pytest.raises(KeyError, match="known"):
        P.apply(img, "snow", 1, 0, "s")
    with pytest.raises(KeyError, match="evaluation.perturbations.snow"):
        P.conditions({"snow": [1]})


def test_conditions_and_levels_round_trip():
    conds = P.conditions({"none": ["-"], "jpeg": [75], "crop": [0.1], "mixed": ["random"]})
    assert conds == [("none", "-"), ("jpeg", "75"), ("crop", "0.1"), ("mixed", "random")]
    assert P.parse_level("75") == 75 and P.parse_level("0.1") == 0.1
