"""paste_object: what it keeps, what it changes, its size and angle bounds, and its awkward inputs."""
from __future__ import annotations

import numpy as np
import pytest

from misc.cda import VARIANTS, mask_bbox, paste_object


def _background(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _object(height: int = 40, width: int = 30, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A random-texture object with an elliptical mask touching all four sides of its box."""
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    rows, cols = np.mgrid[:height, :width]
    mask = ((rows - (height - 1) / 2) / (height / 2)) ** 2 + ((cols - (width - 1) / 2) / (width / 2)) ** 2 <= 1.0
    return image, mask


def _paste(seed: int, background=None, obj=None, **kwargs):
    background = _background() if background is None else background
    image, mask = _object() if obj is None else obj
    return paste_object(background, image, mask, np.random.default_rng(seed), **kwargs)


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_shape_dtype_and_untouched_background(variant):
    background = _background()
    for seed in range(10):
        out, pasted = _paste(seed, background, **VARIANTS[variant])
        assert out.shape == background.shape and out.dtype == background.dtype
        assert pasted.shape == background.shape[:2] and pasted.dtype == bool
        assert pasted.any()
        if variant != 'blur':       # blur also softens a one-pixel ring just outside the mask
            np.testing.assert_array_equal(out[~pasted], background[~pasted])


def test_pasted_pixels_equal_object_without_transform():
    image, mask = _object(40, 30)
    background = _background()
    for seed in range(5):
        out, pasted = _paste(seed, background, (image, mask), rotate=False)
        top, bottom, left, right = mask_bbox(pasted)
        assert (bottom - top, right - left) == (40, 30)
        np.testing.assert_array_equal(pasted[top:bottom, left:right], mask)
        np.testing.assert_array_equal(out[top:bottom, left:right][mask], image[mask])


@pytest.mark.parametrize('variant', sorted(VARIANTS))
@pytest.mark.parametrize('obj_size', [(40, 30), (110, 60), (50, 150), (300, 400)])
def test_size_bounds(variant, obj_size):
    height, width, max_ratio = 120, 160, 0.7
    background = _background(height, width)
    obj = _object(*obj_size)
    for seed in range(30):
        _, pasted = _paste(seed, background, obj, max_ratio=max_ratio, **VARIANTS[variant])
        top, bottom, left, right = mask_bbox(pasted)
        assert bottom - top <= max_ratio * height + 1
        assert right - left <= max_ratio * width + 1


def test_zero_rotation_equals_unrotated_paste():
    for seed in range(5):
        rotated_out, rotated_mask = _paste(seed, rotate=True, max_rotation=0)
        plain_out, plain_mask = _paste(seed, rotate=False)
        np.testing.assert_array_equal(rotated_out, plain_out)
        np.testing.assert_array_equal(rotated_mask, plain_mask)


def _bar_heights(max_rotation: int, seeds=range(40)) -> list[int]:
    bar = (np.full((6, 100, 3), 200, np.uint8), np.ones((6, 100), bool))
    heights = []
    for seed in seeds:
        _, pasted = _paste(seed, _background(375, 500), bar, max_rotation=max_rotation)
        top, bottom, left, right = mask_bbox(pasted)
        assert right - left >= 95              # nearly horizontal: the length shows across
        heights.append(bottom - top)
    return heights


def test_rotation_bounds_small_angle():
    # A 100 x 6 bar turned by |a| <= 10 degrees spans at most 100 sin(10) + 6 cos(0) ~ 23.4 rows.
    heights = _bar_heights(10)
    assert max(heights) <= 25
    assert max(heights) > 10                   # some seeds really rotate it
    assert min(heights) >= 6


def test_rotation_bounds_large_angle_reach_further():
    bar = (np.full((6, 100, 3), 200, np.uint8), np.ones((6, 100), bool))
    heights = []
    for seed in range(40):
        _, pasted = _paste(seed, _background(375, 500), bar, max_rotation=90)
        top, bottom, _, _ = mask_bbox(pasted)
        heights.append(bottom - top)
    assert max(heights) > 60


def test_cap_applies_to_the_rotated_canvas():
    # A disc of diameter 100 turned by an angle a sits on a canvas of side 100 (|cos a| + |sin a|), while its
    # own extent stays 100. The reference caps the canvas, empty corners included, at 0.7 of the
    # background, so the disc shrinks by 70 / canvas; capping the disc's tight box would keep it at 70.
    yy, xx = np.mgrid[:100, :100]
    disc = (yy - 49.5) ** 2 + (xx - 49.5) ** 2 <= 50 ** 2
    obj = (np.full((100, 100, 3), 200, np.uint8), disc)
    shrunk = 0
    for seed in range(20):
        angle = int(np.random.default_rng(seed).integers(-90, 91))     # paste_object's first draw
        _, pasted = _paste(seed, _background(100, 100), obj, max_rotation=90)
        top, bottom, left, right = mask_bbox(pasted)
        canvas = 100 * (abs(np.cos(np.radians(angle))) + abs(np.sin(np.radians(angle))))
        expected = 100 * min(1.0, 70 / canvas)
        assert max(bottom - top, right - left) <= expected + 2
        shrunk += canvas > 110
    assert shrunk >= 5          # most angles enlarge the canvas well past the disc


def test_rotated_object_keeps_its_area():
    image, mask = _object(60, 40)
    for seed in range(10):
        _, pasted = _paste(seed, _background(375, 500), (image, mask))
        assert abs(int(pasted.sum()) - int(mask.sum())) <= 0.05 * mask.sum()


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_one_pixel_mask(variant):
    image = np.full((5, 5, 3), 7, np.uint8)
    mask = np.zeros((5, 5), bool)
    mask[2, 3] = True
    for seed in range(20):
        out, pasted = _paste(seed, obj=(image, mask), **VARIANTS[variant])
        if variant != 'blur':                   # a blurred single pixel is weaker than one half
            assert pasted.sum() >= 1
            assert (out[pasted] == 7).all()


def test_empty_mask_returns_copy():
    background = _background()
    image, mask = _object()
    out, pasted = paste_object(background, image, np.zeros_like(mask), np.random.default_rng(0))
    np.testing.assert_array_equal(out, background)
    assert out is not background and not pasted.any()


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_oversized_object_and_tiny_background(variant):
    background = _background(40, 50)
    obj = _object(120, 150)                     # three times the background
    out, pasted = _paste(0, background, obj, **VARIANTS[variant])
    assert out.shape == background.shape and pasted.any()
    tiny = _background(1, 1)
    out, pasted = _paste(0, tiny, obj, **VARIANTS[variant])
    assert out.shape == (1, 1, 3)


def test_inputs_not_mutated():
    background = _background()
    image, mask = _object()
    copies = background.copy(), image.copy(), mask.copy()
    for variant in VARIANTS.values():
        paste_object(background, image, mask, np.random.default_rng(0), **variant)
    for before, after in zip(copies, (background, image, mask)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_non_contiguous_inputs(variant):
    background = _background()
    image, mask = _object()
    flipped = np.fliplr(background), np.fliplr(image), np.fliplr(mask)
    out, pasted = paste_object(*flipped, np.random.default_rng(0), **VARIANTS[variant])
    expected_out, expected_mask = paste_object(*(np.ascontiguousarray(a) for a in flipped),
                                               np.random.default_rng(0), **VARIANTS[variant])
    np.testing.assert_array_equal(out, expected_out)
    np.testing.assert_array_equal(pasted, expected_mask)
    strided = _background(240, 320)[::2, ::2]
    out, _ = paste_object(strided, image[:, ::-1], mask[::-1], np.random.default_rng(0), **VARIANTS[variant])
    assert out.shape == strided.shape


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_determinism(variant):
    first = _paste(3, **VARIANTS[variant])
    again = _paste(3, **VARIANTS[variant])
    other = _paste(4, **VARIANTS[variant])
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_blur_blends_between_the_two_sources():
    # Flat colours: every changed pixel must lie between the background and the object colour.
    background = np.full((120, 160, 3), 20, np.uint8)
    image = np.full((40, 30, 3), 220, np.uint8)
    _, mask = _object(40, 30)
    for seed in range(10):
        out, pasted = paste_object(background, image, mask, np.random.default_rng(seed), **VARIANTS['blur'])
        assert out.min() >= 20 and out.max() <= 220
        edge = (out > 20) & (out < 220)
        assert edge.any()                       # the soft edge exists
        assert (out[pasted] > 127).all() and (out[~pasted] <= 127).all()


def test_blur_with_textures_stays_within_sources():
    background = _background()
    image, mask = _object()
    for seed in range(10):
        out, _ = paste_object(background, image, mask, np.random.default_rng(seed), rotate=False, blur=True)
        # Blurring draws nothing from the generator, so the sharp paste with this seed shows where it went.
        _, sharp = paste_object(background, image, mask, np.random.default_rng(seed), rotate=False)
        top, bottom, left, right = mask_bbox(sharp)
        region = slice(top, bottom), slice(left, right)
        low = np.minimum(background[region], image).astype(int)
        high = np.maximum(background[region], image).astype(int)
        assert (out[region] >= low - 1).all() and (out[region] <= high + 1).all()
        outside = np.ones(background.shape[:2], bool)
        outside[region] = False
        np.testing.assert_array_equal(out[outside], background[outside])


def test_scale_variant_rescales_within_range():
    image, mask = _object(50, 40)
    heights = set()
    for seed in range(40):
        _, pasted = _paste(seed, _background(375, 500), (image, mask), **VARIANTS['scale'])
        top, bottom, _, _ = mask_bbox(pasted)
        heights.add(bottom - top)
    assert min(heights) >= 0.8 * 50 - 1 and max(heights) <= 1.2 * 50 + 1
    assert len(heights) > 3


def test_mismatched_object_raises():
    with pytest.raises(ValueError):
        paste_object(_background(), np.zeros((10, 10, 3), np.uint8), np.ones((9, 10), bool),
                     np.random.default_rng(0))
