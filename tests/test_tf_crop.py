"""The tf.data engine's random-resized crop decodes a JPEG cropped: the
same box and the same pixels as decoding it whole (which other formats
are), in every EXIF orientation."""

import io

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from PIL import Image  # noqa: E402

from train.data import tf_image_ops as ops  # noqa: E402


def _encode(pixels, fmt, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_stored_window_turns_into_the_upright_box(orientation):
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (7, 11, 1), np.uint8)
    turned = ops.upright(tf.constant(stored), orientation).numpy()
    height, width = ops.upright_shape(7, 11, orientation)
    assert turned.shape[:2] == (int(height), int(width))
    for _ in range(20):
        top, left = rng.integers(0, turned.shape[0]), rng.integers(
            0, turned.shape[1])
        rows = rng.integers(1, turned.shape[0] - top + 1)
        cols = rng.integers(1, turned.shape[1] - left + 1)
        y, x, h, w = ops.stored_window(top, left, rows, cols, 7, 11,
                                       orientation).numpy()
        part = ops.upright(tf.constant(stored[y:y + h, x:x + w]),
                           orientation).numpy()
        np.testing.assert_array_equal(
            part, turned[top:top + rows, left:left + cols])


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
def test_a_jpeg_and_a_png_of_its_pixels_give_the_same_crop(subsampling):
    rng = np.random.default_rng(subsampling)
    pixels = rng.integers(0, 256, (75, 100, 3), np.uint8)
    jpeg = _encode(pixels, "JPEG", quality=90, subsampling=subsampling)
    decoded = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    png = _encode(decoded, "PNG")  # The JPEG's own pixels, losslessly.
    shapes = set()
    for orientation in range(1, 9):
        for step in range(5):
            seed = tf.constant([orientation, step], tf.int64)
            fused = ops.decode_and_random_crop(tf.constant(jpeg), seed,
                                               orientation).numpy()
            whole = ops.decode_and_random_crop(tf.constant(png), seed,
                                               orientation).numpy()
            np.testing.assert_array_equal(fused, whole)
            shapes.add(fused.shape)
    assert len(shapes) > 10  # The boxes differ from draw to draw.


def test_the_box_depends_on_the_shape_and_seed_only():
    pixels = np.zeros((40, 64, 3), np.uint8)
    jpeg = tf.constant(_encode(pixels, "JPEG"))
    grey = tf.constant(_encode(pixels[..., 0], "PNG"))
    seed = tf.constant([3, 4], tf.int64)
    _, size = ops.sample_crop_box(40, 64, seed)
    expected = (int(size[0]), int(size[1]), 3)
    assert ops.decode_and_random_crop(jpeg, seed).shape == expected
    assert ops.decode_and_random_crop(grey, seed).shape == expected
    # Decoded pixels (TFDS data sets stored that way) take the same box.
    assert ops.decode_and_random_crop(tf.constant(pixels),
                                      seed).shape == expected
    assert ops.decode_and_random_crop(jpeg, seed).shape == expected
    others = {ops.decode_and_random_crop(
        jpeg, tf.constant([3, s], tf.int64)).shape for s in range(8)}
    assert len(others) > 1
