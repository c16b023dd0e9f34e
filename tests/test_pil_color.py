"""misc.pil_color against torchvision on PIL images: every result byte-equal (torch.equal), CPU and CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from misc import pil_color
from voc12.dataloader import color_jitter_image

DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA'))]

# Factors of the three blends: the copy shortcuts (0, 1, and values that round to 1.0f), interpolation,
# extrapolation (> 1, clipped), and random ones.
BLEND_FACTORS = [0.0, 1.0, 1 - 1e-9, 1e-3, 0.25, 0.5, 0.7, 0.999, 1.001, 1.3, 2.0, 5.0] \
    + list(np.random.default_rng(0).uniform(0.0, 2.0, 8))
# Hue factors of both signs: shifts that round to 0 (|255 h| < 1), to +-1, mid-range and the limits.
HUE_FACTORS = [0.0, 1e-4, -1e-4, 0.0039, -0.0039, 0.004, -0.004, 0.05, -0.05, 0.1, -0.1, 0.3, -0.37, 0.5, -0.5] \
    + list(np.random.default_rng(1).uniform(-0.5, 0.5, 5))


def _images() -> list[np.ndarray]:
    """(H, W, 3) uint8 test images: random ones holding the extremes (black, white, greys where s == 0,
    primaries), uniform black / white / grey, one pixel, and one whose "L" mean is exactly k + 0.5."""
    rng = np.random.default_rng(2)
    images = []
    for h, w in ((23, 31), (16, 16), (7, 50)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        extremes = np.array([[0, 0, 0], [255, 255, 255], [128, 128, 128], [1, 1, 1], [254, 254, 254],
                             [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], np.uint8)
        img[0, :len(extremes)] = extremes[:w]
        img[1, :] = rng.integers(0, 256, (w, 1), dtype=np.uint8)  # greys
        images.append(img)
    images += [np.zeros((5, 6, 3), np.uint8), np.full((5, 6, 3), 255, np.uint8), np.full((4, 4, 3), 77, np.uint8),
               rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)]
    half = np.zeros((2, 2, 3), np.uint8)
    half[0] = 1  # "L" levels 1, 1, 0, 0: mean 0.5, grey int(1.0) = 1
    images.append(half)
    return images


IMAGES = _images()


def _check(ours, theirs, factors, device: str) -> None:
    for img in IMAGES:
        tensor = torch.from_numpy(img).to(device)
        for factor in factors:
            expected = torch.from_numpy(np.asarray(theirs(Image.fromarray(img), factor)).copy())
            got = ours(tensor, factor)
            assert got.device == tensor.device and got.dtype == torch.uint8
            assert torch.equal(got.cpu(), expected), (img.shape, factor)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('name', ['brightness', 'contrast', 'saturation'])
def test_blend_adjustments_match_pil(name: str, device: str) -> None:
    _check(getattr(pil_color, f'adjust_{name}'), getattr(TF, f'adjust_{name}'), BLEND_FACTORS, device)


@pytest.mark.parametrize('device', DEVICES)
def test_hue_matches_pil(device: str) -> None:
    _check(pil_color.adjust_hue, TF.adjust_hue, HUE_FACTORS, device)
    with pytest.raises(ValueError):
        pil_color.adjust_hue(torch.zeros((2, 2, 3), dtype=torch.uint8, device=device), 0.6)


def test_blend_every_pair_of_levels() -> None:
    """The blend formula on all 256 x 256 (degenerate, image) level pairs, through Image.blend itself."""
    a, b = torch.meshgrid(torch.arange(256), torch.arange(256), indexing='ij')
    a = a.to(torch.uint8)[..., None].expand(256, 256, 3).contiguous()
    b = b.to(torch.uint8)[..., None].expand(256, 256, 3).contiguous()
    pa, pb = Image.fromarray(a.numpy()), Image.fromarray(b.numpy())
    for factor in [0.1, 0.3333, 0.77, 1.2, 1.7, 3.1] + list(np.random.default_rng(3).uniform(0.0, 2.0, 6)):
        expected = torch.from_numpy(np.asarray(Image.blend(pa, pb, factor)).copy())
        assert torch.equal(pil_color._blend(a, b, factor), expected), factor


@pytest.mark.parametrize('device', DEVICES)
def test_all_colours_against_pil(device: str) -> None:
    """Every 24-bit colour once: the "L" conversion and the HSV round trip (hue shift 0; non-zero shifts and
    their wrap-around are covered on the small images)."""
    index = np.arange(1 << 24, dtype='>u4')  # big-endian bytes (0, r, g, b) of 0 .. 2^24 - 1
    colours = np.ascontiguousarray(index.view(np.uint8).reshape(4096, 4096, 4)[..., 1:])
    image = Image.fromarray(colours)
    colours = torch.from_numpy(colours).to(device)
    expected_l = torch.from_numpy(np.asarray(image.convert('L')).copy())
    assert torch.equal(pil_color.rgb_to_l(colours).cpu(), expected_l)
    expected = torch.from_numpy(np.asarray(TF.adjust_hue(image, 0.0)).copy())
    assert torch.equal(pil_color.adjust_hue(colours, 0.0).cpu(), expected)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('strength', [(0.3, 0.3, 0.3, 0.1), (0.0, 0.3, 0.0, 0.1), (0.3, 0.0, 0.5, 0.0),
                                      (1.5, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)])
def test_apply_jitter_matches_color_jitter_image(strength: tuple[float, ...], device: str) -> None:
    img = IMAGES[0]
    tensor = torch.from_numpy(img).to(device)
    for seed in range(40):
        expected = np.asarray(color_jitter_image(Image.fromarray(img), np.random.default_rng(seed), strength))
        rng = np.random.default_rng(seed)
        order, factors = pil_color.jitter_parameters(rng, strength)
        assert len(order) == sum(s > 0 for s in strength) and len(factors) == len(order)
        got = pil_color.apply_jitter(tensor, order, factors)
        assert torch.equal(got.cpu(), torch.from_numpy(expected.copy())), (seed, order, factors)

        # The generator ends where color_jitter_image leaves it, so later draws of a worker are unchanged.
        reference = np.random.default_rng(seed)
        color_jitter_image(Image.fromarray(img), reference, strength)
        assert rng.random() == reference.random()


def test_jitter_parameters_draws() -> None:
    order, factors = pil_color.jitter_parameters(np.random.default_rng(5), (0.3, 0.3, 0.3, 0.1))
    assert sorted(order) == [0, 1, 2, 3]
    for i, factor in zip(order, factors):
        assert (-0.1 <= factor <= 0.1) if i == 3 else (0.7 <= factor <= 1.3)
    assert pil_color.jitter_parameters(np.random.default_rng(5), (0.0, 0.0, 0.0, 0.0)) == ((), ())
    with pytest.raises(ValueError):
        pil_color.apply_jitter(torch.zeros((2, 2, 3), dtype=torch.uint8), (0, 1), (1.0,))
    with pytest.raises(ValueError):
        pil_color.apply_jitter(torch.zeros((2, 2), dtype=torch.uint8), (), ())
