"""Every image that decodes opens as RGB and goes through every perturbation.

The corpus is written in the test: odd sizes, modes, bit depths, formats and file names.
"""

import io
import struct

import numpy as np
import pytest
from PIL import Image

from bilora.data import perturbations as P
from bilora.data.images import MIN_SIDE, open_rgb, to_rgb

RNG = np.random.default_rng(0)
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _rgb(w, h):
    return RNG.integers(0, 256, (h, w, 3)).astype(np.uint8)


def _same(a):
    return lambda out: np.array_equal(out, a)


def _close(a, tol):
    return lambda out: np.abs(out.astype(int) - a.astype(int)).max() <= tol


def _near(a, mean_tol):
    return lambda out: np.abs(out.astype(int) - a.astype(int)).mean() < mean_tol


def _build(d):
    """[(name, path, (w, h), check of the RGB array)] written under ``d``."""
    cases = []

    def add(name, img, check, **save):
        path = d / name
        img.save(path, **save)
        cases.append((name, path, img.size, check))

    for name, (w, h) in [("one.png", (1, 1)), ("row.png", (40, 1)), ("column.png", (1, 40)),
                         ("strip.png", (3000, 17)), ("two.png", (2, 2))]:
        a = _rgb(w, h)
        add(name, Image.fromarray(a), _same(a))
    grey = RNG.integers(0, 256, (12, 10)).astype(np.uint8)
    add("grey.png", Image.fromarray(grey), _same(np.repeat(grey[..., None], 3, axis=2)))
    deep = np.linspace(0, 65535, 16 * 9).round().astype(np.uint16).reshape(9, 16)
    deep_img = Image.fromarray(deep)
    assert deep_img.mode == "I;16"

    def deep_check(out):
        assert out[..., 0].max() == 255  # 65535 -> 255
        return (np.abs(out[..., 0].astype(int) - deep.astype(int) / 257).max() <= 1
                and np.abs(out[..., 0].astype(int) - (deep >> 8)).max() <= 1)
    add("deep16.png", deep_img, deep_check)
    add("cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)),  # pure red in CMYK
        _close(np.full((16, 16, 3), RED, np.uint8), 12), quality=95)
    pal = Image.new("P", (6, 4), 1)
    pal.putpalette([*RED, *BLUE] + [0] * 762)
    pal.putpixel((0, 0), 0)  # index 0 (red) is transparent: its colour is kept

    def pal_check(out):
        return tuple(out[0, 0]) == RED and tuple(out[3, 5]) == BLUE
    add("palette.png", pal, pal_check, transparency=0)
    la = np.stack([grey, np.full_like(grey, 0)], axis=2)  # fully transparent
    add("la.png", Image.fromarray(la), _same(np.repeat(grey[..., None], 3, axis=2)))
    rgba = np.concatenate([_rgb(7, 5), RNG.integers(0, 256, (5, 7, 1)).astype(np.uint8)], 2)
    add("rgba.png", Image.fromarray(rgba), _same(rgba[..., :3]))  # no premultiplication
    frames = [Image.new("RGB", (8, 6), c) for c in (RED, BLUE, GREEN)]
    add("anim.gif", frames[0], _same(np.full((6, 8, 3), RED, np.uint8)), save_all=True,
        append_images=frames[1:], duration=50, loop=0)
    add("anim.webp", frames[1], _same(np.full((6, 8, 3), BLUE, np.uint8)), save_all=True,
        append_images=[frames[0], frames[2]], duration=50, lossless=True)
    for name, fmt, lossy in [("photo.webp", "WEBP", True), ("scan.tiff", "TIFF", False),
                             ("old.bmp", "BMP", False), ("UPPER.PNG", "PNG", False),
                             ("UPPER.JPG", "JPEG", True), ("bild_ä_猫.png", "PNG", False)]:
        a = np.kron(_rgb(4, 3), np.ones((8, 8, 1), np.uint8))
        # lossy: measured mean error 7.4 (WebP), 8.5 (JPEG); swapped channels give ~85
        add(name, Image.fromarray(a), _near(a, 20) if lossy else _same(a), format=fmt)
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("odd"))


CONDITIONS = [("none", "-"), ("noise", 10), ("noise", "random"), ("blur", 9),
              ("blur", "random"), ("jpeg", 30), ("jpeg", "random"), ("crop", 0.2),
              ("crop", "random"), ("downscale", 16), ("mixed", "random")]


def test_every_odd_image_opens_as_rgb_and_survives_every_perturbation(corpus):
    assert MIN_SIDE == 1
    assert len(corpus) == 19
    for name, path, (w, h), check in corpus:
        img = open_rgb(path)
        assert img.mode == "RGB" and img.size == (w, h), name
        assert check(np.asarray(img)), name
        for protocol in P.PROTOCOLS:
            for kind, level in CONDITIONS:
                out = P.apply(img, kind, level, 0, name, protocol=protocol)
                assert out.mode == "RGB", (name, protocol, kind)
                transposed = protocol == "ricker" and kind in ("crop", "mixed")
                assert out.size in ({(w, h), (h, w)} if transposed else {(w, h)}), (
                    name, protocol, kind, out.size)
                if protocol == "ricker" and kind == "crop":
                    assert out.size == (h, w)  # OpenCV dsize=(rows, cols)
                small = np.asarray(out.resize((48, 48), Image.BICUBIC))
                assert small.shape == (48, 48, 3)


def test_open_rgb_reads_bytes_and_takes_the_first_frame(corpus):
    by_name = {name: path for name, path, _, _ in corpus}
    gif = by_name["anim.gif"].read_bytes()
    assert open_rgb(gif).getpixel((0, 0)) == RED
    with Image.open(by_name["anim.gif"]) as im:
        im.seek(2)
        assert to_rgb(im).getpixel((0, 0)) == RED  # to_rgb rewinds to frame 0


def test_to_rgb_scales_integers_by_bit_depth_and_clips_floats():
    i32 = Image.fromarray(np.array([[0, 65535, 32768]], np.int32))  # mode I, 16-bit range
    assert i32.mode == "I"
    assert np.asarray(to_rgb(i32))[0, :, 0].tolist() == [0, 255, 128]
    wide = Image.fromarray(np.array([[-5, 2**31 - 1]], np.int32))  # beyond 16 bits: 31
    assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 255]
    f = Image.fromarray(np.array([[-3.0, 12.4, 300.0]], np.float32))
    assert np.asarray(to_rgb(f))[0, :, 0].tolist() == [0, 12, 255]
    big16 = Image.frombytes("I;16B", (2, 1), np.array([0x1234, 0xFFFF], ">u2").tobytes())
    assert np.asarray(to_rgb(big16))[0, :, 0].tolist() == [18, 255]  # 4660/257 = 18.1


def _twelve_bit_tiff(values):
    """A one-row, 12-bit (packed) greyscale TIFF, written by hand: Pillow writes only 16."""
    bits = "".join(format(v, "012b") for v in values)
    data = int(bits, 2).to_bytes(len(bits) // 8, "big")
    entries = [(256, len(values)), (257, 1), (258, 12), (259, 1), (262, 1), (273, None),
               (277, 1), (278, 1), (279, len(data))]  # 273: strip offset, filled below
    offset = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, value in entries:
        out += struct.pack("<HHII", tag, 4, 1, offset if value is None else value)
    return out + struct.pack("<I", 0) + data


def test_to_rgb_uses_the_bit_depth_a_tiff_declares():
    raw = _twelve_bit_tiff([0, 2048, 4095, 1024])
    with Image.open(io.BytesIO(raw)) as im:
        assert im.mode == "I;16" and np.asarray(im).max() == 4095
    # v * 255 / 4095, rounded: not v >> 8 (0, 8, 15, 4), not clipped at 255
    assert np.asarray(open_rgb(raw))[0, :, 0].tolist() == [0, 128, 255, 64]
