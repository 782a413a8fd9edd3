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
