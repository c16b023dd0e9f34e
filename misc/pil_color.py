"""torchvision's colour jitter on PIL images, reproduced bit for bit on uint8 torch tensors on any device.

Why: the training loaders jitter colours with `voc12.dataloader.color_jitter_image`, i.e. torchvision's
`adjust_brightness/contrast/saturation/hue` on PIL images, in the CPU workers. This module lets a loader
draw the same parameters in the worker (`jitter_parameters`, same numpy draws in the same order) and
apply them later on the training device (`apply_jitter`) without changing a single pixel.

How exactness is obtained, per operation of Pillow (13.x) and torchvision (0.2x, the PIL path):

* Brightness, contrast and saturation are `ImageEnhance`'s `Image.blend(degenerate, image, factor)`.
  Blend.c converts the factor to a C `float` alpha, copies an input when alpha is exactly 0 or 1, and
  otherwise computes `(float)in1 + alpha * (float)(in2 - in1)` in float32 (two roundings: the product,
  then the sum), clips to [0, 255] (only needed, and only done, when alpha is outside [0, 1]) and
  truncates to uint8. Here the same two float32 operations are separate torch ops in the same order (no
  lerp/addcmul/`add(alpha=)`, which may fuse into one rounding), with alpha a float32 tensor on the
  image's device; clipping in every case is a no-op for alpha in [0, 1].
* Degenerate images: brightness' is black; saturation's is the image converted to "L" and back to RGB;
  contrast's is a uniform grey of `int(mean + 0.5)`, the mean of the "L" image from `ImageStat`
  (`sum / count` of the histogram, Python doubles). "L" is Convert.c's integer
  `(19595 r + 38470 g + 7471 b + 0x8000) >> 16`. The grey level is computed in integers as
  `(2 sum + n) // (2 n)`, equal to the double-precision expression for any image under 2^43 pixels
  (the mean is a fraction p/n at least 1/(2n) away from k + 0.5 when not equal to it, far more than the
  doubles' rounding error), and needs no float64 (absent on some devices) nor a host sync.
* Hue is torchvision's: PIL RGB -> HSV, H += `np.int32(hue_factor * 255).astype(np.uint8)` with uint8
  wrap-around, PIL HSV -> RGB; a shift of 0 still makes the (lossy) round trip. PIL's two conversions
  are taken as they are: lookup tables of all 2^24 colours, built once per process by PIL itself and
  cached per device (2 x 64 MiB, colours packed in int32), so each conversion is one gather.

All other operations are integer, so CPU and CUDA give the same bytes as PIL (tests/test_pil_color.py).
The one dependence on how Pillow was compiled: Blend.c's `in1 + alpha * d` must not be contracted into a
fused multiply-add, which holds for the x86-64 wheels (no FMA in the baseline ISA); a Pillow built with
FMA contraction (e.g. some aarch64 builds) could differ by one level on rare pixels, which the tests would
show.
"""
from __future__ import annotations

import functools
import sys
import threading
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ['jitter_parameters', 'apply_jitter', 'adjust_brightness', 'adjust_contrast', 'adjust_saturation',
           'adjust_hue', 'rgb_to_l']

_N_COLOURS = 1 << 24
_LUT_SIDE = 4096  # a 4096 x 4096 image holds every 24-bit colour once


# ----------------------------------------------------------------------------- parameters

def jitter_parameters(rng: np.random.Generator, strength: Sequence[float]) \
        -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The draws of `voc12.dataloader.color_jitter_image(image, rng, strength)`, in the same order (so `rng`
    ends in the same state): a permutation of the four adjustments, three factors uniform in
    [max(0, 1 - s), 1 + s] and a hue shift uniform in [-h, h]; every one is drawn even when its strength is 0.

    strength: (brightness, contrast, saturation, hue). Returns (order, factors): the indices of the
    adjustments actually applied (0 brightness, 1 contrast, 2 saturation, 3 hue), in the order they apply,
    and their factors, for `apply_jitter`."""
    brightness, contrast, saturation, hue = strength
    permutation = rng.permutation(4)
    drawn = [rng.uniform(max(0.0, 1 - s), 1 + s) for s in (brightness, contrast, saturation)]
    drawn.append(rng.uniform(-hue, hue))
    order = tuple(int(i) for i in permutation if (i < 3 and strength[i] > 0) or (i == 3 and hue > 0))
    return order, tuple(float(drawn[i]) for i in order)


def apply_jitter(img: torch.Tensor, order: Sequence[int], factors: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 on any device -> (H, W, 3) uint8 on the same device: the adjustments `order` (indices
    into brightness, contrast, saturation, hue) with `factors`, as returned by `jitter_parameters`. Equal to
    `color_jitter_image` on the PIL image with the same draws."""
    if len(order) != len(factors):
        raise ValueError(f'{len(order)} adjustments but {len(factors)} factors')
    _check_image(img)
    for i, factor in zip(order, factors):
        img = ADJUSTMENTS[i](img, factor)
    return img


# ----------------------------------------------------------------------------- the four adjustments

def adjust_brightness(img: torch.Tensor, brightness_factor: float) -> torch.Tensor:
    """`torchvision.transforms.functional.adjust_brightness` on the PIL image: blend of black and `img`.
    img (H, W, 3) uint8 -> (H, W, 3) uint8."""
    _check_image(img)
    return _blend(torch.zeros((), dtype=torch.uint8, device=img.device), img, brightness_factor)


def adjust_contrast(img: torch.Tensor, contrast_factor: float) -> torch.Tensor:
    """`torchvision.transforms.functional.adjust_contrast` on the PIL image: blend of a uniform grey (the
    rounded mean of the "L" image) and `img`. img (H, W, 3) uint8 -> (H, W, 3) uint8."""
    _check_image(img)
    n = img.shape[0] * img.shape[1]
    if n == 0:
        return img.clone()
    total = rgb_to_l(img).sum(dtype=torch.int64)  # () int64: the histogram's sum of levels
    grey = torch.div(2 * total + n, 2 * n, rounding_mode='floor')  # int(sum / n + 0.5), see the module doc
    return _blend(grey.to(torch.uint8), img, contrast_factor)


def adjust_saturation(img: torch.Tensor, saturation_factor: float) -> torch.Tensor:
    """`torchvision.transforms.functional.adjust_saturation` on the PIL image: blend of the "L" image (as
    RGB) and `img`. img (H, W, 3) uint8 -> (H, W, 3) uint8."""
    _check_image(img)
    return _blend(rgb_to_l(img).unsqueeze(-1), img, saturation_factor)  # (H, W, 1) broadcasts over RGB


def adjust_hue(img: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """`torchvision.transforms.functional.adjust_hue` on the PIL image: PIL's RGB -> HSV, the hue shifted by
    `np.int32(hue_factor * 255)` modulo 256, PIL's HSV -> RGB (made even when the shift is 0).
    img (H, W, 3) uint8 -> (H, W, 3) uint8; hue_factor in [-0.5, 0.5]."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f'hue_factor ({hue_factor}) is not in [-0.5, 0.5].')
    _check_image(img)
    # np.int32(x) truncates toward zero, .astype(np.uint8) wraps modulo 256: int() and % do the same.
    shift = int(hue_factor * 255) % 256
    rgb_to_hsv, hsv_to_rgb = _luts(img.device)
    hsv = rgb_to_hsv.index_select(0, _pack(img).view(-1))  # (H W,) int32, bytes (h, s, v, 0)
    hsv = (hsv & 0xFFFF00) | ((hsv + shift) & 0xFF)  # h + shift modulo 256, s and v untouched
    return _unpack(hsv_to_rgb.index_select(0, hsv)).view(img.shape)


ADJUSTMENTS: tuple[Callable[[torch.Tensor, float], torch.Tensor], ...] = (
    adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


# ----------------------------------------------------------------------------- PIL's arithmetic

def rgb_to_l(img: torch.Tensor) -> torch.Tensor:
    """PIL's `convert("L")` (Convert.c, integer ITU-R 601-2 luma): (..., 3) uint8 -> (...) uint8."""
    rgb = img.to(torch.int32)
    luma = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
    return (luma >> 16).to(torch.uint8)


def _blend(degenerate: torch.Tensor, img: torch.Tensor, factor: float) -> torch.Tensor:
    """`Image.blend(degenerate, img, factor)` (Blend.c): degenerate uint8 broadcastable to img (H, W, 3)
    uint8 -> (H, W, 3) uint8."""
    alpha = np.float32(factor)  # C's double -> float conversion, round to nearest
    if alpha == 0.0:
        return degenerate.expand_as(img).clone()
    if alpha == 1.0:
        return img.clone()
    in1 = degenerate.to(torch.float32)
    diff = img.to(torch.float32) - in1  # exact: a difference of small integers
    product = diff * torch.tensor(alpha, dtype=torch.float32, device=img.device)  # rounded once, like C
    blended = in1 + product  # rounded once more, like C
    return blended.clamp_(0, 255).to(torch.uint8)  # clip (a no-op for alpha in [0, 1]), truncate


def _pack(img: torch.Tensor) -> torch.Tensor:
    """(..., 3) uint8 -> (...) int32 whose bytes in memory are (c0, c1, c2, 0): on a little-endian machine
    (every device torch runs on) the index c0 | c1 << 8 | c2 << 16 into the 2^24-colour tables. One
    pad and a reinterpretation, far cheaper than widening each channel."""
    return torch.nn.functional.pad(img, (0, 1)).view(torch.int32).squeeze(-1)


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `_pack`: (...) int32 -> (..., 3) uint8, contiguous."""
    return packed.unsqueeze(-1).view(torch.uint8)[..., :3].contiguous()


@functools.lru_cache(maxsize=None)
def _cpu_luts() -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's two colour conversions of every 24-bit colour, made by PIL once per process: rgb_to_hsv and
    hsv_to_rgb, each (2^24,) int32, entry `_pack(c)` holding `_pack(convert(c))`."""
    if sys.byteorder != 'little':
        raise RuntimeError('misc.pil_color packs colours into int32 assuming a little-endian machine')
    # Little-endian bytes of 0 .. 2^24 - 1 are (c0, c1, c2, 0): pixel i of this image is the colour packing to i.
    colours = np.arange(_N_COLOURS, dtype='<u4').view(np.uint8).reshape(_N_COLOURS, 4)[:, :3].tobytes()
    size = (_LUT_SIDE, _LUT_SIDE)
    tables = []
    for source, target in (('RGB', 'HSV'), ('HSV', 'RGB')):
        converted = np.asarray(Image.frombytes(source, size, colours).convert(target))  # (4096, 4096, 3) uint8
        tables.append(_pack(torch.from_numpy(converted.reshape(_N_COLOURS, 3).copy())))
    return tables[0], tables[1]


_device_luts: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
_device_luts_lock = threading.Lock()


def _luts(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`_cpu_luts()` on `device`, copied there once."""
    if device.type == 'cpu':
        return _cpu_luts()
    with _device_luts_lock:
        if device not in _device_luts:
            _device_luts[device] = tuple(t.to(device) for t in _cpu_luts())
        return _device_luts[device]


def _check_image(img: torch.Tensor) -> None:
    if img.dim() != 3 or img.shape[-1] != 3 or img.dtype != torch.uint8:
        raise ValueError(f'expected an (H, W, 3) uint8 image, got {tuple(img.shape)} {img.dtype}')
