"""TensorFlow image ops of the tf.data engine: decoding, EXIF orientation
and the random-resized crop's fused JPEG decode.

A JPEG is cropped while it is decoded (``tf.image.decode_and_crop_jpeg``):
only the rows and the blocks of columns under the crop are decompressed,
as in the reference ImageNet pipelines, instead of the whole image. The
crop box is drawn from the image's shape alone (read from the JPEG header),
so a JPEG and a PNG of the same pixels get the same box; other formats are
decoded whole and then cropped.
"""

from __future__ import annotations

import tensorflow as tf

# The Inception crop: area 8-100%, aspect 3/4-4/3, 10 tries, else the
# whole image.
CROP_AREA = (0.08, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
# Columns decoded beyond each side of a JPEG crop: a 4:2:0 or 4:2:2
# JPEG's block (MCU) is 16 pixels wide.
_JPEG_MARGIN = 16


def decode(image: tf.Tensor) -> tf.Tensor:
    """Encoded bytes (JPEG/PNG) or uint8 pixels -> uint8 HWC, 3 channels."""
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
    elif image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return image


def upright(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """HWC pixels turned as their EXIF ``orientation`` (1 to 8) says, as
    PIL's ``ImageOps.exif_transpose`` (which the eval spec applies): a
    portrait phone photo is stored sideways with a tag."""
    def transpose():
        return tf.transpose(image, [1, 0, 2])
    turned = tf.switch_case(tf.cast(orientation, tf.int32) - 1, [
        lambda: image,                                    # 1: upright
        lambda: tf.image.flip_left_right(image),          # 2
        lambda: tf.image.rot90(image, 2),                 # 3
        lambda: tf.image.flip_up_down(image),             # 4
        transpose,                                        # 5: transpose
        lambda: tf.image.rot90(image, 3),                 # 6
        lambda: tf.image.rot90(transpose(), 2),           # 7: transverse
        lambda: tf.image.rot90(image, 1),                 # 8
    ], default=lambda: image)
    turned.set_shape([None, None, image.shape[-1]])
    return turned


def _valid(orientation) -> tf.Tensor:
    """1 to 8; anything else is upright (as :func:`upright`'s default)."""
    orientation = tf.cast(orientation, tf.int32)
    return tf.where((orientation >= 1) & (orientation <= 8), orientation, 1)


def upright_shape(height, width, orientation) -> tuple:
    """``(height, width)`` of the image once turned upright."""
    swap = _valid(orientation) >= 5  # The transposing orientations.
    return tf.where(swap, width, height), tf.where(swap, height, width)


def stored_window(top, left, height, width, stored_height, stored_width,
                  orientation) -> tf.Tensor:
    """``[top, left, height, width]`` in the stored image of the box
    ``(top, left, height, width)`` of the upright image: the region that
    :func:`upright` turns into that box."""
    y, x, h, w = top, left, height, width
    hs, ws = stored_height, stored_width
    windows = tf.stack([
        tf.stack([y, x, h, w]),                      # 1
        tf.stack([y, ws - x - w, h, w]),             # 2: mirrored
        tf.stack([hs - y - h, ws - x - w, h, w]),    # 3: rotated 180
        tf.stack([hs - y - h, x, h, w]),             # 4: flipped
        tf.stack([x, y, w, h]),                      # 5: transposed
        tf.stack([hs - x - w, y, w, h]),             # 6: rotated 90 cw
        tf.stack([hs - x - w, ws - y - h, w, h]),    # 7: transverse
        tf.stack([x, ws - y - h, w, h]),             # 8: rotated 90 ccw
    ])
    return tf.gather(windows, _valid(orientation) - 1)


def sample_crop_box(height, width, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """``(begin, size)``, each ``[y, x, 0]``/``[h, w, -1]``, of an Inception
    crop of a ``height`` x ``width`` image: a function of the shape and the
    seed only."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.stack([height, width, 3]), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed, min_object_covered=0.1, aspect_ratio_range=CROP_ASPECT,
        area_range=CROP_AREA, max_attempts=CROP_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    return begin, size


def decode_and_random_crop(image: tf.Tensor, seed: tf.Tensor,
                           orientation: tf.Tensor | None = None
                           ) -> tf.Tensor:
    """An Inception crop, uint8 HWC with 3 channels, of the upright image.

    ``image`` is encoded bytes or uint8 pixels; ``orientation`` its EXIF
    orientation (image folders; None: upright). The box is drawn on the
    upright image's shape with ``seed``: the same box, and the same pixels,
    whether the bytes are a JPEG (decoded cropped) or not (decoded whole).
    The crop is cut in the stored image and turned upright after: one turn,
    of the crop only.
    """
    if orientation is not None:
        orientation = tf.cast(orientation, tf.int32)

    def window(stored_height, stored_width):
        """The crop's [top, left, rows, cols] in the stored image."""
        height, width = stored_height, stored_width
        if orientation is not None:
            height, width = upright_shape(height, width, orientation)
        begin, size = sample_crop_box(height, width, seed)
        if orientation is None:
            return begin[0], begin[1], size[0], size[1]
        return tf.unstack(stored_window(begin[0], begin[1], size[0], size[1],
                                        stored_height, stored_width,
                                        orientation))

    def whole(pixels):
        pixels = decode(pixels)
        shape = tf.shape(pixels)
        top, left, rows, cols = window(shape[0], shape[1])
        return pixels[top:top + rows, left:left + cols]

    def fused():
        stored = tf.image.extract_jpeg_shape(image)
        top, left, rows, cols = window(stored[0], stored[1])
        # libjpeg decodes a cropped JPEG as if the crop's left and right
        # edges were the image's: with chroma subsampling their columns
        # differ from a whole decode's. A margin of one block each side,
        # cut off after, gives exactly the whole decode's pixels.
        start = tf.maximum(left - _JPEG_MARGIN, 0)
        stop = tf.minimum(left + cols + _JPEG_MARGIN, stored[1])
        crop = tf.image.decode_and_crop_jpeg(
            image, tf.stack([top, start, rows, stop - start]), channels=3)
        return crop[:, left - start:left - start + cols]

    if image.dtype != tf.string:
        crop = whole(image)
    else:
        crop = tf.cond(tf.io.is_jpeg(image), fused, lambda: whole(image))
    crop.set_shape([None, None, 3])
    return crop if orientation is None else upright(crop, orientation)


def pipeline_options() -> tf.data.Options:
    """tf.data options of the trainer's pipelines: the map's parallel calls
    (AUTOTUNE) are the parallelism; an op inside one (a resize) does not
    also spread over every core, which would oversubscribe them."""
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    return options
