"""misc.cv_resize.resize_linear against cv2.resize(..., interpolation=cv2.INTER_LINEAR) on float32 images: the
dataset's scales of VOC-size images, other sizes (up, down, odd, 1 pixel wide or high, long edge runs), windows,
on CPU and (where there is one) CUDA."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from misc.cv_resize import CV2_ATOL, _fma, resize_linear

DATASET_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
# (H, W, height, width): one of each path and edge case (see the module doc of misc.cv_resize)
OTHER_SIZES = [
    (37, 51, 23, 97), (64, 64, 100, 250), (50, 50, 120, 451), (50, 6, 120, 73),   # edge runs of 1..7 columns
    (2, 2, 31, 17), (3, 1000, 7, 3), (100, 38, 50, 19), (13, 17, 29, 5),          # tiny, big down, exact 2x
    (40, 60, 40, 100), (40, 60, 90, 60),                                           # one axis unchanged
    (1, 1, 5, 7), (1, 40, 3, 97), (40, 1, 97, 3), (30, 40, 1, 1), (30, 40, 1, 77),  # 1-pixel sources and outputs
]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')


def _reference_cpu() -> bool:
    """True on the CPU class the exactness was measured on (x86-64, AVX2 + FMA, no AVX-512): IPP picks its
    code by CPU, and elsewhere its edge columns may round differently (within CV2_ATOL)."""
    try:
        flags = next(line for line in Path('/proc/cpuinfo').read_text().splitlines() if line.startswith('flags'))
    except (OSError, StopIteration):
        return False
    flags = set(flags.split(':', 1)[1].split())
    return {'avx2', 'fma'} <= flags and 'avx512f' not in flags


EXACT = _reference_cpu()


def _image(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """(H, W, C) float32 of uint8 values, as the dataset's `img.astype(np.float32)`."""
    return rng.integers(0, 256, (h, w, c)).astype(np.float32)


def _cv2(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2's result, (height, width, C) even for one channel."""
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, img.shape[2])


def _assert_matches(got: torch.Tensor, ref: np.ndarray, what: str) -> None:
    assert cv2.ipp.useIPP(), 'cv2 runs without IPP: its own float32 coefficients differ by up to 5e-3'
    got = got.cpu().numpy()
    assert got.shape == ref.shape and got.dtype == np.float32, what
    diff = float(np.abs(got - ref).max(initial=0))
    assert diff <= CV2_ATOL, f'{what}: max |diff| {diff}'
    if EXACT:
        assert diff == 0, f'{what}: not bit-exact on the reference CPU, max |diff| {diff}'


def _check_dataset_scales(device: str) -> None:
    rng = np.random.default_rng(0)
    for (h, w, c) in [(375, 500, 3), (334, 500, 3), (333, 499, 1)]:      # 334 x 500: exactly 2x at 0.5
        img = _image(rng, h, w, c)
        for scale in DATASET_SCALES:
            height, width = int(h * scale), int(w * scale)                             # augment_for_seg's size
            got = resize_linear(torch.from_numpy(img).to(device), height, width)
            _assert_matches(got, _cv2(img, height, width), f'{h}x{w}x{c} at {scale}')


def _check_other_sizes(device: str) -> None:
    rng = np.random.default_rng(1)
    for i, (h, w, height, width) in enumerate(OTHER_SIZES):
        for c in (1, 3, 4):
            img = _image(rng, h, w, c) if i % 2 else (rng.standard_normal((h, w, c)) * 100).astype(np.float32)
            got = resize_linear(torch.from_numpy(img).to(device), height, width)
            _assert_matches(got, _cv2(img, height, width), f'{h}x{w}x{c} -> {height}x{width}')


def _check_windows(device: str) -> None:
    rng = np.random.default_rng(2)
    windows = [(slice(0, 1), slice(None)), (slice(5, 40), slice(17, 18)), (slice(None, None, -1), slice(3, 90, 7)),
               (slice(-9, None), slice(-30, -2)), (slice(20, 20), slice(None))]
    for (h, w, height, width) in [(37, 51, 23, 97), (50, 50, 120, 451), (40, 1, 97, 3), (1, 40, 3, 97),
                                  (30, 40, 30, 40)]:
        for c in (1, 3):
            img = torch.from_numpy(_image(rng, h, w, c)).to(device)
            full = resize_linear(img, height, width).cpu().numpy()
            for rows, cols in windows:
                window = resize_linear(img, height, width, rows=rows, cols=cols).cpu().numpy()
                assert np.array_equal(window.view(np.uint32), full[rows][:, cols].view(np.uint32)), \
                    f'{h}x{w}x{c} -> {height}x{width} [{rows}, {cols}]'               # same bits


def test_dataset_scales_match_cv2():
    _check_dataset_scales('cpu')


def test_other_sizes_match_cv2():
    _check_other_sizes('cpu')


def test_window_is_the_same_window_of_the_full_result():
    _check_windows('cpu')


def test_crop_window_matches_cv2():
    """The training use: a 321 x 321 crop of a 1.5x rescale, computed alone."""
    img = _image(np.random.default_rng(3), 375, 500, 3)
    got = resize_linear(torch.from_numpy(img), 562, 750, rows=slice(100, 421), cols=slice(400, 721))
    _assert_matches(got, _cv2(img, 562, 750)[100:421, 400:721], 'crop of 375x500 at 1.5')


def test_uint8_and_single_channel_inputs():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (29, 41, 3), dtype=np.uint8)
    _assert_matches(resize_linear(torch.from_numpy(img), 36, 51), _cv2(img.astype(np.float32), 36, 51), 'uint8')
    gray = _image(rng, 29, 41, 1)[..., 0]
    got = resize_linear(torch.from_numpy(gray), 36, 51)
    assert got.shape == (36, 51)
    _assert_matches(got[..., None], _cv2(gray[..., None], 36, 51), '(H, W) input')


def _check_fma_rounds_once(device: str) -> None:
    """a * b + 1 = 1 + 2^-24 + 2^-60: float64 rounds it onto the float32 tie 1 + 2^-24 (then to even, 1.0);
    one rounding gives 1 + 2^-23."""
    a = torch.tensor([1 + 2.0 ** -12], device=device)
    b = torch.tensor([2.0 ** -24 * (1 - 2.0 ** -12 + 2.0 ** -24)], device=device)
    one = torch.ones(1, device=device)
    assert (a.double() * b.double() + 1).float().item() == 1.0                    # the double rounding
    assert _fma(a, b, one).item() == 1 + 2.0 ** -23
    assert _fma(-a, b, -one).item() == -(1 + 2.0 ** -23)
    assert _fma(a, b, -one).item() == np.float32(2.0 ** -24 * (1 + 2.0 ** -36) - 1)


def test_fma_rounds_once():
    _check_fma_rounds_once('cpu')


def test_rejects_what_it_does_not_reproduce():
    with pytest.raises(ValueError, match='2 channels'):
        resize_linear(torch.zeros(4, 4, 2), 8, 8)
    with pytest.raises(TypeError, match='float64'):
        resize_linear(torch.zeros(4, 4, 3, dtype=torch.float64), 8, 8)


@CUDA
def test_cuda_matches_cv2_and_windows():
    _check_dataset_scales('cuda')
    _check_other_sizes('cuda')
    _check_windows('cuda')
    _check_fma_rounds_once('cuda')
