"""Rows of manifests and the images behind them, as training and scoring read them."""

import pytest

from bilora.data.dataset import ImageTable, load_rows


def test_rows_of_a_split_and_generators_with_absolute_paths(tiny_data):
    rows = load_rows([tiny_data], "train", ["sim-LDM", "sim-ADM"])
    # conftest: 48 real and 48 fake training images per generator
    assert len(rows) == 2 * 2 * 48
    assert set(rows.generator) == {"sim-LDM", "sim-ADM"} and set(rows.split) == {"train"}
    assert rows.groupby("generator").label.sum().tolist() == [48, 48]
    assert all(p.startswith(str(tiny_data.parent)) for p in rows.abspath)
    test = load_rows([tiny_data], "test", ["sim-LDM", "sim-ProGAN"])
    # the shared real test set is listed once per test generator, stored once
    assert len(test) == 2 * 2 * 24 and test[test.label == 0].abspath.nunique() == 24


def test_a_generator_without_images_is_named(tiny_data):
    with pytest.raises(KeyError, match=r"no train images for generator\(s\) \['sim-PNDM'\]"):
        load_rows([tiny_data], "train", ["sim-LDM", "sim-PNDM"])


def test_images_come_as_uint8_chw_of_the_asked_size(tiny_data):
    rows = load_rows([tiny_data], "test", ["sim-LDM"])
    image, label = ImageTable(rows, 32)[0]
    assert image.shape == (3, 32, 32) and str(image.dtype) == "torch.uint8"
    assert label == int(rows.label.iloc[0])


@pytest.mark.parametrize("w,h", [(1, 1), (7, 3), (255, 300), (224, 224)])
def test_crop_fit_takes_the_centre_without_resizing_and_pads_small_images(tmp_path, w, h):
    """``fit="crop"`` (UnivFD's / NPR's test preprocessing): the centre 224 x 224 pixels,
    unresized; a smaller image sits in the middle of zeros (torchvision's CenterCrop). The
    expectation is worked out here with numpy offsets, not with torchvision."""
    import hashlib

    import numpy as np
    import pandas as pd
    from PIL import Image

    from bilora.data.dataset import ImageTable

    rng = np.random.default_rng(w * 1000 + h)
    pixels = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)  # no zeros: padding shows
    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    rows = pd.DataFrame({"abspath": [str(path)], "label": [1],
                         "sha1": [hashlib.sha1(path.read_bytes()).hexdigest()]})
    got = ImageTable(rows, 224, fit="crop")[0][0].permute(1, 2, 0).numpy()
    want = np.zeros((224, 224, 3), np.uint8)
    # torchvision pads (224 - side) // 2 before (rounding the rest after), then crops at
    # round((side - 224) / 2)
    def place(side: int) -> tuple[slice, slice]:
        if side <= 224:
            start = (224 - side) // 2
            return slice(start, start + side), slice(0, side)
        start = int(round((side - 224) / 2.0))
        return slice(0, 224), slice(start, start + 224)
    (ty, sy), (tx, sx) = place(h), place(w)
    want[ty, tx] = pixels[sy, sx]
    assert got.shape == (224, 224, 3)
    assert np.array_equal(got, want)


def test_an_unknown_fit_is_refused():
    import pandas as pd

    from bilora.data.dataset import ImageTable

    with pytest.raises(ValueError, match="fit must be one of"):
        ImageTable(pd.DataFrame({"abspath": [], "label": [], "sha1": []}), 8, fit="squash")
