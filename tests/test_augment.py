"""train/data/augment.py: TrivialAugmentWide, RandAugment and RandomErasing
as TensorFlow graph ops, against torchvision's ``transforms`` (the classes
in ``autoaugment.py`` and the tensor kernels they call)."""

# torchvision's tables and _apply_op are the reference.
# pylint: disable=protected-access,import-outside-toplevel

import numpy as np
import pytest
import tensorflow as tf

from train.data import augment

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
# A low-contrast image, so that autocontrast and equalize have work to do;
# its last channel is flat (left alone by both).
DULL = np.concatenate([IMAGE[..., :2] // 3 + 40,
                       np.full((37, 53, 1), 77, np.uint8)], axis=-1)

GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
SEEDS = [tf.constant([s, 7], tf.int64) for s in range(400)]


@pytest.fixture(scope="module")
def tv():
    """torchvision's autoaugment module (v1 transforms, what
    ``torchvision.transforms.TrivialAugmentWide`` runs)."""
    pytest.importorskip("torchvision")
    from torchvision.transforms import autoaugment
    return autoaugment


def torchvision_op(tv, name, image, magnitude, interpolation="bilinear",
                   fill=None):
    import torch
    chw = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    fill = None if fill is None else [float(fill)] * 3
    out = tv._apply_op(chw, name, magnitude,
                       interpolation=tv.InterpolationMode(interpolation),
                       fill=fill)
    return out.permute(1, 2, 0).numpy()


def ta_space(tv):
    return tv.TrivialAugmentWide()._augmentation_space(31)


def ra_space(tv, height, width):
    return tv.RandAugment()._augmentation_space(31, (height, width))


def ta_magnitude(tv, name, bin_, negate=False):
    """torchvision's own TrivialAugmentWide magnitude (a Python float)."""
    table, signed = ta_space(tv)[name]
    value = float(table[bin_]) if table.ndim else 0.0
    return -value if signed and negate else value


def assert_matches(ours, theirs, geometric, interpolation="bilinear"):
    """Bit-exact, except the geometric ops: their sampling grid is torch's
    float32 arithmetic with fused multiply-adds, which we reproduce, but
    torch's kernels differ by CPU (measured bit-exact with AVX512; with
    AVX2 or no SIMD, up to 3 values of 5883 off by 1 level, from grid
    coordinates one float32 step apart moving a bilinear value across a
    rounding boundary). A nearest tap can only change on a coordinate
    within such a step of a pixel boundary: none seen."""
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert ours.shape == theirs.shape and ours.dtype == np.uint8
    if not geometric:
        assert diff.max() == 0, f"{np.sum(diff > 0)} values differ"
    elif interpolation == "bilinear":
        assert diff.max() <= 1 and np.mean(diff > 0) <= 0.005, (
            diff.max(), np.sum(diff > 0))
    else:
        assert np.mean(diff.max(-1) > 0) <= 0.005, np.sum(diff > 0)


def ours_op(name, image, magnitude, interpolation="bilinear", fill=None):
    return augment.apply_op(tf.constant(image), augment.OPS.index(name),
                            magnitude, interpolation, fill).numpy()


# ---------------------------------------------------------------------------
# Each op against torchvision's.

@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_ops_match_torchvision(tv, name):
    for bin_ in (12, 30):
        for negate in (False, True):
            magnitude = ta_magnitude(tv, name, bin_, negate)
            for interpolation in augment.INTERPOLATIONS:
                for fill in (None, 0):
                    assert_matches(
                        ours_op(name, IMAGE, magnitude, interpolation, fill),
                        torchvision_op(tv, name, IMAGE, magnitude,
                                       interpolation, fill),
                        geometric=True, interpolation=interpolation)


def test_geometric_fill_value_matches_torchvision(tv):
    for name in ("ShearX", "Rotate"):
        magnitude = ta_magnitude(tv, name, 20, negate=True)
        for interpolation in augment.INTERPOLATIONS:
            assert_matches(
                ours_op(name, IMAGE, magnitude, interpolation, 128),
                torchvision_op(tv, name, IMAGE, magnitude, interpolation, 128),
                geometric=True, interpolation=interpolation)


@pytest.mark.parametrize("name", ("Brightness", "Color", "Contrast",
                                  "Sharpness"))
def test_blending_ops_match_torchvision_exactly(tv, name):
    for image in (IMAGE, DULL):
        for bin_ in (5, 30):
            for negate in (False, True):
                magnitude = ta_magnitude(tv, name, bin_, negate)
                assert_matches(ours_op(name, image, magnitude),
                               torchvision_op(tv, name, image, magnitude),
                               geometric=False)


@pytest.mark.parametrize("name,bins", [
    ("Identity", (0,)), ("Posterize", (0, 13, 30)),
    ("Solarize", (0, 10, 20, 30)), ("AutoContrast", (0,)),
    ("Equalize", (0,))])
def test_exact_ops_match_torchvision_exactly(tv, name, bins):
    for image in (IMAGE, DULL):
        for bin_ in bins:
            magnitude = ta_magnitude(tv, name, bin_)
            assert_matches(ours_op(name, image, magnitude),
                           torchvision_op(tv, name, image, magnitude),
                           geometric=False)


def test_sharpness_leaves_tiny_images(tv):
    tiny = IMAGE[:2, :5]
    out = augment.adjust_sharpness(tf.constant(tiny), 1.9).numpy()
    np.testing.assert_array_equal(out, tiny)
    assert_matches(out, torchvision_op(tv, "Sharpness", tiny, 0.9),
                   geometric=False)


# ---------------------------------------------------------------------------
# Magnitude tables and the whole transforms.

def test_magnitude_tables_are_torchvisions(tv):
    # Within a float32 step: torch's linspace rounds by CPU kind.
    ours = augment.ta_wide_magnitudes(31)
    space = ta_space(tv)
    for row, name in zip(ours, augment.OPS):
        table, signed = space[name]
        expected = table.numpy() if table.ndim else np.zeros(31)
        np.testing.assert_array_max_ulp(row, expected.astype(np.float32), 1)
        assert signed == (name in augment.SIGNED_OPS)
    for height, width in ((37, 53), (224, 224), (17, 999)):
        space = ra_space(tv, height, width)
        ours = augment.rand_augment_magnitudes(9, 31, height, width).numpy()
        for value, name in zip(ours, augment.OPS):
            table, _ = space[name]
            expected = float(table[9]) if table.ndim else 0.0
            np.testing.assert_array_max_ulp(np.float32(value),
                                            np.float32(expected), 1)


def test_trivial_augment_wide_is_torchvisions_draw(tv):
    """The op, bin and sign drawn for a seed, applied by torchvision, give
    our output."""
    for seed in SEEDS[:24]:
        op, bin_, negate = (t.numpy() for t in
                            augment.trivial_augment_wide_choice(seed))
        name = augment.OPS[op]
        magnitude = ta_magnitude(tv, name, bin_, negate)
        assert_matches(
            augment.trivial_augment_wide(tf.constant(IMAGE), seed).numpy(),
            torchvision_op(tv, name, IMAGE, magnitude),
            geometric=name in GEOMETRIC)


def test_rand_augment_is_torchvisions_draw(tv):
    space = ra_space(tv, *IMAGE.shape[:2])
    for seed in SEEDS[:12]:
        ops, negates = (t.numpy() for t in augment.rand_augment_choice(seed))
        expected = IMAGE
        for op, negate in zip(ops, negates):
            name = augment.OPS[op]
            table, signed = space[name]
            magnitude = float(table[9]) if table.ndim else 0.0
            magnitude = -magnitude if signed and negate else magnitude
            expected = torchvision_op(tv, name, expected, magnitude)
        geometric = any(augment.OPS[op] in GEOMETRIC for op in ops)
        assert_matches(
            augment.rand_augment(tf.constant(IMAGE), seed).numpy(), expected,
            geometric=geometric)


# ---------------------------------------------------------------------------
# Randomness.

@tf.function
def _ta_choice(seed):
    return augment.trivial_augment_wide_choice(seed)


def test_choices_cover_every_op_bin_and_sign():
    choices = [tuple(int(t) for t in _ta_choice(seed)) for seed in SEEDS]
    ops, bins, negates = zip(*choices)
    assert set(ops) == set(range(len(augment.OPS)))
    assert set(bins) == set(range(31))
    assert set(negates) == {0, 1}
    ra_ops = tf.concat([augment.rand_augment_choice(seed)[0]
                        for seed in SEEDS[:100]], 0).numpy()
    assert set(ra_ops) == set(range(len(augment.OPS)))


def test_same_seed_same_image_other_seeds_others():
    image = tf.constant(IMAGE)
    for fn in (augment.trivial_augment_wide, augment.rand_augment):
        outs = [fn(image, seed).numpy() for seed in SEEDS[:8]]
        np.testing.assert_array_equal(fn(image, SEEDS[3]), outs[3])
        assert len({out.tobytes() for out in outs}) >= 5


# ---------------------------------------------------------------------------
# RandomErasing.

def _box(changed):
    rows, cols = np.nonzero(changed.any(-1))
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def test_random_erasing_erases_one_rectangle_within_limits():
    image = RNG.normal(size=(40, 60, 3)).astype(np.float32) + 5.0
    area = 40 * 60
    erased = 0
    for seed in SEEDS[:20]:
        out = augment.random_erasing(tf.constant(image), seed, p=1.0).numpy()
        changed = out != image
        if not changed.any():
            continue  # No draw fitted: torchvision leaves the image too.
        erased += 1
        top, bottom, left, right = _box(changed)
        h, w = bottom - top, right - left
        assert changed[top:bottom, left:right].all()
        assert (out[top:bottom, left:right] == 0.0).all()
        assert changed.sum() == h * w * 3
        # h and w are rounded from sqrt(area * r) and sqrt(area / r).
        assert (h + .5) * (w + .5) >= 0.02 * area
        assert (h - .5) * (w - .5) <= 0.33 * area
        assert 0.3 <= (h + .5) / (w - .5) and (h - .5) / (w + .5) <= 3.3
    assert erased >= 15


def test_random_erasing_leaves_the_image():
    image = RNG.normal(size=(40, 60, 3)).astype(np.float32)
    for seed in SEEDS[:5]:
        np.testing.assert_array_equal(
            augment.random_erasing(tf.constant(image), seed, p=0.0), image)
    # No rectangle of 99-100% of a square fits strictly inside it.
    square = image[:10, :10]
    np.testing.assert_array_equal(
        augment.random_erasing(tf.constant(square), SEEDS[0], p=1.0,
                               scale=(0.99, 1.0), ratio=(1.0, 1.0)), square)


def test_random_erasing_per_channel_value():
    image = np.ones((30, 30, 3), np.float32)
    out = augment.random_erasing(tf.constant(image), SEEDS[1], p=1.0,
                                 value=(-1.0, -2.0, -3.0)).numpy()
    top, bottom, left, right = _box(out != image)
    np.testing.assert_array_equal(out[top:bottom, left:right],
                                  np.broadcast_to([-1., -2., -3.],
                                                  (bottom - top, right - left,
                                                   3)))


# ---------------------------------------------------------------------------
# In tf.data, and the dispatcher.

def _sized_images():
    for i, (h, w) in enumerate([(37, 53), (64, 48), (5, 7), (3, 120)]):
        yield IMAGE[:h, :w] if h <= 37 and w <= 53 else np.resize(
            IMAGE, (h, w, 3)), np.array([i, 11], np.int64)


@pytest.mark.parametrize("interpolation,shape", [
    ("nearest", IMAGE.shape), ("bilinear", [None, None, 3])])
def test_every_op_in_tf_data_is_the_eager_op(interpolation, shape):
    """The graph optimizer must not change the arithmetic (it reassociates
    float32 sums and products where it may)."""
    table = augment.ta_wide_magnitudes()
    cases = [(op, sign * table[op, bin_]) for op in range(len(augment.OPS))
             for bin_ in (6, 17, 27) for sign in (1.0, -1.0)]
    ops, magnitudes = (np.array(values) for values in zip(*cases))
    dataset = tf.data.Dataset.from_tensor_slices(
        (ops.astype(np.int32), magnitudes.astype(np.float64))).map(
            lambda op, m: augment.apply_op(
                tf.ensure_shape(tf.constant(IMAGE), shape), op, m,
                interpolation))
    for (op, magnitude), out in zip(cases, dataset):
        np.testing.assert_array_equal(
            out, augment.apply_op(tf.constant(IMAGE), int(op), magnitude,
                                  interpolation), err_msg=augment.OPS[op])


@pytest.mark.parametrize("name", augment.AUGMENTATIONS)
def test_augment_fn_runs_in_tf_data_on_any_size(name):
    fn = augment.augment_fn(name) if name != "ra" else augment.augment_fn(
        name, magnitude=20, interpolation="nearest")
    dataset = tf.data.Dataset.from_generator(_sized_images, output_signature=(
        tf.TensorSpec([None, None, 3], tf.uint8),
        tf.TensorSpec([2], tf.int64)))
    mapped = dataset.map(lambda image, seed: (fn(image, seed), image, seed))
    mapped = mapped.map(lambda out, image, seed: (
        out, augment.random_erasing(tf.cast(out, tf.float32), seed, p=1.0),
        image, seed))
    for out, erased, image, seed in mapped:
        assert out.dtype == tf.uint8 and out.shape == image.shape
        assert erased.dtype == tf.float32 and erased.shape == image.shape
        # Eager, the same seed gives the same image.
        np.testing.assert_array_equal(out, fn(image, seed))
    if name == "":
        np.testing.assert_array_equal(out, image)


def test_augment_fn_refuses_unknown_names_and_options():
    with pytest.raises(ValueError, match=r"'autoaugment'.*'ta_wide'.*'ra'"):
        augment.augment_fn("autoaugment")
    with pytest.raises(ValueError, match="'bicubic'"):
        augment.augment_fn("ta_wide", interpolation="bicubic")
    with pytest.raises(TypeError, match="num_op"):
        augment.augment_fn("ra", num_op=2)
    with pytest.raises(ValueError, match="magnitude"):
        augment.rand_augment(tf.constant(IMAGE), SEEDS[0], magnitude=31)


def test_affine_centre_pivot_is_torchvisions(tv):
    """The general affine (rotation and shear about a chosen pixel)."""
    import torch
    from torchvision.transforms import functional as F
    chw = torch.from_numpy(IMAGE).permute(2, 0, 1).contiguous()
    expected = F.affine(chw, angle=20.0, translate=[3, -2], scale=1.0,
                        shear=[10.0, -5.0], center=[10, 30],
                        interpolation=tv.InterpolationMode.BILINEAR)
    ours = augment.affine(tf.constant(IMAGE), 20.0, (3, -2), (10.0, -5.0),
                          center=(10, 30)).numpy()
    assert_matches(ours, expected.permute(1, 2, 0).numpy(), geometric=True)
