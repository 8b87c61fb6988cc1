"""The native resize (`resnext_jax.inference.resample`) gives Pillow's
pixels and `serving.normalize`'s values bit for bit, and the library falls
back to Pillow where it cannot be had."""

from __future__ import annotations

import concurrent.futures
import io
import logging

import numpy as np
import PIL
import pytest
from PIL import Image

from resnext_jax import _native
from resnext_jax.inference import resample, serving
from resnext_jax.inference.preprocessing import Preprocessing

PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@pytest.fixture(scope="module")
def resizer():
    native = resample.resizer()
    if native is None:
        pytest.skip(f"no native resize here: {resample.unavailable_reason()}")
    return native


@pytest.fixture
def fresh_state(monkeypatch):
    """The module's cached resizer forgotten (restored after the test)."""
    monkeypatch.setattr(resample, "_state", {})


def _random_case(rng):
    height, width = (int(v) for v in rng.integers(1, 160, 2))
    out_h, out_w = (int(v) for v in rng.integers(1, 200, 2))
    # Keep one side now and then: a single pass.
    if rng.random() < 0.15:
        out_h = height
    elif rng.random() < 0.15:
        out_w = width
    crop_h, crop_w = (int(rng.integers(1, n + 1)) for n in (out_h, out_w))
    top = int(rng.integers(0, out_h - crop_h + 1))
    left = int(rng.integers(0, out_w - crop_w + 1))
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return (Image.fromarray(pixels), (out_w, out_h),
            (left, top, left + crop_w, top + crop_h),
            str(rng.choice(list(PIL_FILTERS))))


@pytest.mark.parametrize("copy", [False, True], ids=["lent", "copied"])
def test_random_resizes_equal_pillow_bit_for_bit(resizer, copy):
    # "lent": Pillow's own RGBX memory; "copied": its pixels copied into
    # numpy (RGB, 3 bytes a pixel), as for an image in several blocks.
    rng = np.random.default_rng(7)
    for _ in range(150):
        image, size, crop, interpolation = _random_case(rng)
        want = np.asarray(
            image.resize(size, PIL_FILTERS[interpolation]).crop(crop))
        got = resizer(image, size, crop, interpolation, copy=copy)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want, err_msg=str(
            (image.size, size, crop, interpolation)))
        mean, std = (0.5, 0.25, 0.125), (0.2, 0.3, 0.7)
        normalized = resizer(image, size, crop, interpolation, mean, std,
                             copy=copy)
        np.testing.assert_array_equal(
            normalized, serving.normalize(want, mean, std))


@pytest.mark.parametrize("copy", [False, True], ids=["lent", "copied"])
@pytest.mark.parametrize("case", [
    # A tall photo shrunk more in height: Pillow 13's vertical pass first.
    ((900, 2400), (256, 682), (16, 229, 240, 453), "bicubic"),
    # A large reduction the other way, and an upscale.
    ((2400, 900), (682, 256), (229, 16, 453, 240), "bilinear"),
    ((150, 110), (349, 256), (62, 16, 286, 240), "bicubic"),
])
def test_large_ratios_equal_pillow(resizer, case, copy):
    (width, height), size, crop, interpolation = case
    image = Image.fromarray(np.random.default_rng(width).integers(
        0, 256, (height, width, 3), dtype=np.uint8))
    want = np.asarray(image.resize(size, PIL_FILTERS[interpolation])
                      .crop(crop))
    np.testing.assert_array_equal(
        resizer(image, size, crop, interpolation, copy=copy), want)


def test_threads_resize_at_once(resizer):
    # Each thread keeps its own scratch buffers; the calls release the GIL.
    rng = np.random.default_rng(11)
    cases = [_random_case(rng) for _ in range(48)]
    wants = [np.asarray(image.resize(size, PIL_FILTERS[interp]).crop(crop))
             for image, size, crop, interp in cases]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            gots = list(pool.map(lambda case: resizer(*case), cases))
            for got, want in zip(gots, wants):
                np.testing.assert_array_equal(got, want)


def test_the_pass_order_found_is_this_pillows(resizer):
    # Pillow 13 runs the vertical pass first where the height shrinks by
    # more than twice as many pixels as the width; older Pillow never does.
    major = int(PIL.__version__.split(".")[0])
    assert resizer.order == (1 if major >= 13 else 0)


def _jpeg(size, mode="RGB", seed=0, **save):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, "JPEG" if mode in ("RGB", "L") else
                             "PNG", **save)
    return buffer.getvalue()


@pytest.mark.parametrize("spec", [
    Preprocessing(),
    Preprocessing(interpolation="bicubic", resize_size=300, crop_size=288),
    Preprocessing.cifar(32),
    Preprocessing(interpolation="nearest"),
])
def test_the_spec_equals_serving(resizer, spec):
    exif = Image.Exif()
    exif[0x0112] = 6  # Stored sideways: turned upright first.
    files = [_jpeg((500, 375)), _jpeg((375, 500), seed=1),
             _jpeg((640, 200), seed=2), _jpeg((256, 300), seed=3),
             _jpeg((333, 251), seed=4, exif=exif.tobytes()),
             _jpeg((120, 90), mode="L", seed=5),
             _jpeg((97, 131), mode="RGBA", seed=6),
             _jpeg((80, 80), mode="P", seed=7)]
    for data in files:
        want = serving.load_image(io.BytesIO(data), spec.resize_size,
                                  spec.crop_size, spec.mean, spec.std,
                                  spec.interpolation)
        np.testing.assert_array_equal(spec.load_image(io.BytesIO(data)), want)
        with Image.open(io.BytesIO(data)) as image:
            np.testing.assert_array_equal(
                spec.pixels(image), serving.resize_and_crop(
                    image, spec.resize_size, spec.crop_size,
                    spec.interpolation))


def test_an_image_in_several_memory_blocks(resizer):
    # Pillow keeps a large image in blocks (16 MiB by default) that it
    # cannot lend as one array: its pixels are copied instead.
    image = Image.fromarray(np.random.default_rng(3).integers(
        0, 256, (1800, 2600, 3), dtype=np.uint8))
    assert resample._Arrow.pixels(image) is None
    spec = Preprocessing()
    np.testing.assert_array_equal(spec(image), serving.normalize(
        serving.resize_and_crop(image)))


def test_a_crop_outside_the_resized_image_is_refused(resizer):
    image = Image.new("RGB", (20, 10))
    with pytest.raises(ValueError, match=r"crop \(0, 0, 12, 9\).*inside the "
                       "resized image"):
        resizer(image, (12, 8), (0, 0, 12, 9), "bilinear")
    with pytest.raises(ValueError, match="mode \\(='L'\\) must be 'RGB'"):
        resizer(image.convert("L"), (12, 8), (0, 0, 4, 4), "bilinear")


def _spec_values():
    data = _jpeg((300, 200), seed=9)
    return Preprocessing().load_image(io.BytesIO(data)), serving.load_image(
        io.BytesIO(data))


def test_switched_off_uses_pillow(fresh_state, monkeypatch):
    monkeypatch.setenv(resample.SWITCH_ENV, "off")
    assert resample.resizer() is None
    assert resample.unavailable_reason() == "RESNEXT_JAX_NATIVE_RESIZE=off"
    got, want = _spec_values()
    np.testing.assert_array_equal(got, want)


def test_no_compiler_uses_pillow_and_says_why(fresh_state, monkeypatch,
                                              caplog):
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("PATH", "")
    with caplog.at_level(logging.INFO, logger=resample.__name__):
        assert resample.resizer() is None
        assert resample.resizer() is None
    assert "no C++ compiler found" in resample.unavailable_reason()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "resized by Pillow" in lines[0], lines
    got, want = _spec_values()
    np.testing.assert_array_equal(got, want)


def test_disagreeing_with_pillow_uses_pillow(resizer, fresh_state,
                                             monkeypatch):
    # As with a Pillow whose resize changed: the probes catch it.
    monkeypatch.setattr(resample, "ORDERS", (0,) if resizer.order else (1,))
    assert resample.resizer() is None
    assert "disagrees with Pillow" in resample.unavailable_reason()
    got, want = _spec_values()
    np.testing.assert_array_equal(got, want)


def test_an_unwritable_cache_uses_pillow(fresh_state, tmp_path,
                                         monkeypatch):
    cache = tmp_path / "kernels"
    cache.mkdir()
    (cache / ".build.lock").mkdir()  # Cannot be opened as the lock file.
    monkeypatch.setenv(_native.CACHE_ENV, str(cache))
    assert resample.resizer() is None
    assert "failed" in resample.unavailable_reason()
    got, want = _spec_values()
    np.testing.assert_array_equal(got, want)


def test_any_error_while_loading_uses_pillow(fresh_state, monkeypatch):
    def broken():
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr(resample, "_load", broken)
    assert resample.resizer() is None
    assert resample.unavailable_reason() == (
        "RuntimeError: something unforeseen")
    got, want = _spec_values()
    np.testing.assert_array_equal(got, want)


def test_build_errors_name_the_library(tmp_path, monkeypatch):
    try:
        _native.find_compiler("a test")
    except _native.BuildError as err:
        pytest.skip(str(err))
    monkeypatch.setenv(_native.CACHE_ENV, str(tmp_path))
    source = tmp_path / "broken.cc"
    source.write_text("int f( {\n")
    with pytest.raises(_native.BuildError, match="compiling the broken "
                       "thing failed: .*error"):
        _native.build("broken", source, lambda compiler, out: [
            compiler, "-shared", "-fPIC", str(source), "-o", out],
            "the broken thing")
    # Nothing left behind but the lock.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".build.lock",
                                                          "broken.cc"]
