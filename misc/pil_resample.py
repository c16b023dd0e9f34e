"""Pillow's bicubic resize of uint8 images, bit for bit, in torch on any device.

The CAM, SEAM and CDA training samples are resized with `PIL.Image.resize(size, Image.BICUBIC)`, the most
expensive part of a sample on a loader worker. So that a GPU run can do it on the device without changing a
pixel, this module repeats Pillow's own arithmetic (`src/libImaging/Resample.c`, 8 bits per channel):

- per output position, a window of source taps and their weights in double precision: the centre
  (x + 0.5) * scale, a support of 2 * max(scale, 1), the window bounds rounded by truncation, the bicubic
  kernel (a = -0.5) at (tap - centre + 0.5) / max(scale, 1), the weights divided by their sequential sum;
- the weights turned into 22-bit fixed point (rounded half away from zero, by truncation of w * 2^22 +- 0.5);
- a horizontal pass, then a vertical pass over its uint8 result, each an integer sum of pixel * weight started
  at 2^21, shifted right by 22 (floor) and clipped to 0..255; a pass whose size does not change is skipped.

The weights are computed on the CPU with numpy in the same double operations (cached per size pair); the
passes are integer sums, exact in any order, so the result is Pillow's on every device. Pillow's integer sums
fit 32 bits by its own design (2 bits of headroom), and torch's int32 products and sums are exact there too.
An output window (`rows`, `cols`) is computed from the source rows and columns it needs only, as Pillow's own
vertical pass reads only the rows its taps reach: a training crop costs its own pixels, not the whole image's.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import numpy as np
import torch

PRECISION_BITS = 32 - 8 - 2          # Pillow's fixed point for 8-bit images
BICUBIC_A = -0.5
BICUBIC_SUPPORT = 2.0


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic kernel (a = -0.5), in its operation order."""
    x = np.abs(x)
    near = ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * BICUBIC_A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=512)
def bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's taps for resizing an axis of `in_size` pixels to `out_size`: (first (out,) int64 source index,
    weights (out, K) int32 in 22-bit fixed point, 0 past each window's end)."""
    scale = float(np.float32(in_size)) / out_size        # (double)(in1 - in0) / outSize, box (0, in_size)
    filter_scale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filter_scale
    ksize = int(math.ceil(support)) * 2 + 1
    centre = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    first = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
    stop = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), in_size)
    count = stop - first
    taps = np.arange(ksize)
    inside = taps[None, :] < count[:, None]
    offsets = (taps[None, :] + first[:, None]) - centre[:, None] + 0.5        # (x + xmin - center + 0.5)
    weights = np.where(inside, _bicubic(offsets * (1.0 / filter_scale)), 0.0)
    total = np.zeros(out_size)
    for k in range(ksize):                               # Pillow sums the window in order
        total = total + weights[:, k]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    scaled = weights * (1 << PRECISION_BITS)
    fixed = np.where(weights < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int32)
    return first, fixed


def _resample(img: torch.Tensor, dim: int, first: np.ndarray, weights: np.ndarray, in_size: int) -> torch.Tensor:
    """One pass along `dim` of an int32 image: out[i] = clip8((2^21 + sum_k img[first[i] + k] * w[i, k]) >> 22)."""
    device = img.device
    first_t = torch.from_numpy(first).to(device)
    weights_t = torch.from_numpy(weights).to(device)
    shape = [1] * img.dim()
    shape[dim] = -1
    acc = None
    for k in range(weights.shape[1]):
        if not weights[:, k].any():
            continue
        taken = img.index_select(dim, (first_t + k).clamp_(max=in_size - 1)) * weights_t[:, k].view(shape)
        acc = taken if acc is None else acc.add_(taken)
    if acc is None:
        out_shape = list(img.shape)
        out_shape[dim] = len(first)
        acc = img.new_zeros(out_shape)
    acc.add_(1 << (PRECISION_BITS - 1))
    return torch.bitwise_right_shift(acc, PRECISION_BITS).clamp_(0, 255)


def _source_span(first: np.ndarray, weights: np.ndarray, in_size: int) -> tuple[int, int]:
    """[start, stop) of the source positions that taps (first, weights) reach (a few spare ones are harmless)."""
    if len(first) == 0:
        return 0, 0
    return int(first.min()), min(int(first.max()) + weights.shape[1], in_size)


def resize_bicubic(img: torch.Tensor, size: tuple[int, int], rows: Optional[tuple[int, int]] = None,
                   cols: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """img (H, W[, C]) uint8 on any device -> `np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))`
    for size (width, height), or its window rows [r0, r1) x cols [c0, c1) of the resized image; uint8."""
    width, height = int(size[0]), int(size[1])
    in_h, in_w = int(img.shape[0]), int(img.shape[1])
    r0, r1 = rows if rows is not None else (0, height)
    c0, c1 = cols if cols is not None else (0, width)
    if not (0 <= r0 <= r1 <= height and 0 <= c0 <= c1 <= width):
        raise ValueError(f'window rows {r0}:{r1}, cols {c0}:{c1} is outside the resized {height} x {width} image')
    need_vertical, need_horizontal = height != in_h, width != in_w
    # Pillow 13 runs the vertical pass first when the height shrinks by more than twice the width's change
    vertical_first = (in_h - height) > 0 and (in_h - height) > (in_w - width) * 2
    if need_vertical:
        first_v, weights_v = (a[r0:r1] for a in bicubic_taps(in_h, height))
        y0, y1 = _source_span(first_v, weights_v, in_h)
    else:
        y0, y1 = r0, r1
    if need_horizontal:
        first_h, weights_h = (a[c0:c1] for a in bicubic_taps(in_w, width))
        x0, x1 = _source_span(first_h, weights_h, in_w)
    else:
        x0, x1 = c0, c1
    if vertical_first:
        work = _resample(img[y0:y1, x0:x1].to(torch.int32), 0, first_v - y0, weights_v, y1 - y0)
        if need_horizontal:
            work = _resample(work, 1, first_h - x0, weights_h, x1 - x0)
    else:
        work = img[y0:y1, x0:x1].to(torch.int32)
        if need_horizontal:
            work = _resample(work, 1, first_h - x0, weights_h, x1 - x0)
        if need_vertical:
            work = _resample(work, 0, first_v - y0, weights_v, y1 - y0)
    return work.to(torch.uint8)
