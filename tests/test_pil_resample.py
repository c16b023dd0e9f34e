"""misc.pil_resample against Pillow's own bicubic resize, and misc.device_augment's crops against the PIL
pipeline: bit for bit, on random sizes that take every branch (either pass alone, both in either order,
up- and downscales, windows of the result)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from misc.device_augment import mirrored_box, render_crop, encode_recipe
from misc.imutils import random_crop_box
from misc.pil_resample import bicubic_taps, resize_bicubic

DEVICES = [torch.device('cpu')] + ([torch.device('cuda')] if torch.cuda.is_available() else [])


def pil_bicubic(img: np.ndarray, size) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


def random_cases(rng: np.random.Generator, n: int):
    for case in range(n):
        height, width = (int(v) for v in rng.integers(1, 90, 2))
        out_h, out_w = (int(v) for v in rng.integers(1, 200, 2))
        if case % 4 == 0:
            out_h = height                    # horizontal pass only
        elif case % 4 == 1:
            out_w = width                     # vertical pass only
        img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        if case % 5 == 0:                     # hard edges: the kernel's negative lobes clip at 0 and 255
            img = np.where(rng.random((height, width, 1)) < 0.5, 0, 255).astype(np.uint8).repeat(3, axis=2)
        yield img, (out_w, out_h)


@pytest.mark.parametrize('device', DEVICES, ids=str)
def test_resize_equals_pillow(device):
    rng = np.random.default_rng(0)
    for img, size in random_cases(rng, 160):
        out = resize_bicubic(torch.from_numpy(img).to(device), size).cpu().numpy()
        assert np.array_equal(out, pil_bicubic(img, size)), (img.shape, size)


def test_resize_takes_pillows_pass_order():
    """Pillow 13 runs the vertical pass first when the height shrinks by more than twice the width's change;
    the two orders round differently, so a case where it matters must come out as Pillow's."""
    img = np.random.default_rng(1).integers(0, 256, (93, 118, 3), dtype=np.uint8)
    assert np.array_equal(resize_bicubic(torch.from_numpy(img), (116, 4)).numpy(), pil_bicubic(img, (116, 4)))
    assert np.array_equal(resize_bicubic(torch.from_numpy(img), (300, 60)).numpy(), pil_bicubic(img, (300, 60)))


def test_windows_equal_the_same_window_of_the_whole_result():
    rng = np.random.default_rng(2)
    for img, size in random_cases(rng, 60):
        whole = pil_bicubic(img, size)
        r0 = int(rng.integers(0, size[1]))
        r1 = int(rng.integers(r0, size[1] + 1))
        c0 = int(rng.integers(0, size[0]))
        c1 = int(rng.integers(c0, size[0] + 1))
        window = resize_bicubic(torch.from_numpy(img), size, (r0, r1), (c0, c1)).numpy()
        assert np.array_equal(window, whole[r0:r1, c0:c1]), (img.shape, size, r0, r1, c0, c1)
    with pytest.raises(ValueError, match='outside'):
        resize_bicubic(torch.zeros(4, 4, 3, dtype=torch.uint8), (8, 8), (0, 9))


def test_paper_sizes_and_taps():
    img = np.random.default_rng(3).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    for size in [(683, 512), (320, 240), (1024, 768), (250, 188)]:
        assert np.array_equal(resize_bicubic(torch.from_numpy(img), size).numpy(), pil_bicubic(img, size))
    first, weights = bicubic_taps(500, 683)
    assert first.shape == (683,) and weights.dtype == np.int32
    assert np.all(np.abs(weights.sum(axis=1) - (1 << 22)) <= weights.shape[1])   # rows sum to 1.0 in 22 bits


@pytest.mark.parametrize('device', DEVICES, ids=str)
def test_render_crop_equals_the_pil_pipeline(device):
    """resize, flip, crop with 0 padding (the compact sample's PIL steps), and the mirrored box of a pipeline
    that flips its crop instead."""
    rng = np.random.default_rng(4)
    for img, size in random_cases(rng, 40):
        crop = int(rng.integers(8, 120))
        flip = bool(rng.random() > 0.5)
        image = Image.fromarray(img).resize(size, Image.BICUBIC) if size != img.shape[1::-1] else Image.fromarray(img)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        box = random_crop_box(image.size[::-1], crop, rng)
        left, top = box[6] - box[2], box[4] - box[0]
        expected = np.array(image.crop((left, top, left + crop, top + crop)))
        out = render_crop(torch.from_numpy(img).to(device), encode_recipe(size, flip, box, crop).tolist())
        assert np.array_equal(out.cpu().numpy(), expected), (img.shape, size, flip, box)
        # crop first, flip the crop: the same as the flipped image cropped with the mirrored box
        unflipped = Image.fromarray(img)
        box = random_crop_box(img.shape[:2], crop, rng)
        left, top = box[6] - box[2], box[4] - box[0]
        expected = np.array(unflipped.crop((left, top, left + crop, top + crop)).transpose(
            Image.Transpose.FLIP_LEFT_RIGHT))
        recipe = encode_recipe(img.shape[1::-1], True, mirrored_box(box, img.shape[1], crop), crop).tolist()
        assert np.array_equal(render_crop(torch.from_numpy(img).to(device), recipe).cpu().numpy(), expected)


def test_block_mean8_and_confident_label_equal_numpys():
    """The device's 8 x 8 block means sum in numpy's order: equal bits on random marginals (float16 values,
    zero padding), and the confident label from them equal to aff_dataset's."""
    from misc.device_augment import block_mean8, confident_label
    from voc12.aff_dataset import block_mean, confident_label as numpy_confident_label
    rng = np.random.default_rng(5)
    for case in range(40):
        channels, side = int(rng.integers(1, 8)), 8 * int(rng.integers(2, 40))
        maps = rng.random((2 * channels, side, side)).astype(np.float16).astype(np.float32)
        maps[:, :int(rng.integers(0, side))] = 0                         # a crop's padding
        if case % 4 == 0:
            maps *= np.float32(1000)
        pooled = block_mean(maps)
        got = block_mean8(torch.from_numpy(maps))
        assert np.array_equal(got.numpy(), pooled), (channels, side)
        label = confident_label(got[:channels], got[channels:]).numpy()
        assert np.array_equal(label, numpy_confident_label(pooled[:channels], pooled[channels:]))
    with pytest.raises(ValueError, match='at least 16'):
        block_mean8(torch.zeros(2, 8, 8))
