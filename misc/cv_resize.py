"""OpenCV's bilinear resize of float32 images, `cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)`,
in torch on any device, so that a training loader can rescale on the GPU instead of in its CPU workers
(`voc12.seg_dataset.augment_for_seg`), and compute only the window of the rescaled image that its crop keeps.

What opencv-python 5.0 (the x86-64 wheel, built with Intel IPP) runs for a float32 image, and so what this
module reproduces:

* Output size equal to the input size: a copy.
* Source at least 2 x 2 pixels, 1, 3 or 4 channels: IPP's resize. OpenCV's IPP HAL takes the call before
  OpenCV's own code runs, so neither OpenCV's float32 source coordinates nor its exact-2x-downscale shortcut
  (INTER_AREA's 2 x 2 mean, in `hal::resize`) is ever reached here. Per axis (n source, dn output pixels) the
  source coordinate is x = (d + 0.5) * (n / dn) - 0.5 in double, the weight w = float32(x - floor(x)) and
  the taps floor(x), floor(x) + 1; where floor(x) < 0 or >= n - 1 the tap is clamped to the edge and w = 0.
  Horizontal pass, then vertical pass, each out = fma(w, q - p, p) (q - p in float32, then one fused
  multiply-add, emulated here exactly in float64). One exception: IPP's edge code for upscales. In the
  leading (floor(x) < 0) and trailing (floor(x) >= n - 1) runs of output columns, it takes the columns in
  pairs, first to last, and the vertical step of a pair is p + w * (q - p), product rounded (3 channels:
  channels 0 and 1 only; 4 channels: all; 1 channel: none). The run's odd last column stays fused.
* Source 1 pixel high or wide: IPP declines and OpenCV's own code runs. Coordinate rounded to float32 first,
  f = fx - floor(fx) in float32. Horizontally, outside [0, n - 1) the tap is clamped with weight 0.
  Vertically the weights are never clamped, only the source rows. out = (1 - f) * p + f * q, each product
  rounded.

Tolerance: bit-exact, measured as max |difference| from cv2 = 0 on the CPU. The cases: the dataset's
scales (0.5, 0.75, 1, 1.25, 1.5) of VOC-size images; some 23,000 size pairs from 1 to 1200 pixels (up and
down, odd, 1 pixel wide or high); 1, 3 and 4 channels; integer and real values. On CUDA the same IEEE
float32 / float64 elementwise operations run, one kernel each (nothing fused), but this session had no GPU
to compare them against cv2. The reference is this wheel's IPP code on an AVX2 + FMA x86-64 CPU (AMD EPYC).
IPP picks its code by CPU, and the edge-column rule above belongs to that code. On other CPUs (AVX-512, no
FMA) expect, unmeasured, a rounding step fused or not elsewhere: a float32 ulp or two, `CV2_ATOL` for
values in 0..255. Not reproduced: OpenCV without IPP (`cv2.ipp.setUseIPP(False)`, builds without IPP,
e.g. ARM), whose float32 coordinates differ by up to 5e-3 on 0..255 values; 2 or more than 4 channels,
which take OpenCV's own code. Values must be finite.
"""
from __future__ import annotations

import numpy as np
import torch

# Largest |this - cv2| for values in 0..255 allowed on CPUs whose IPP code rounds the fused and unfused steps
# differently from the AVX2 reference (two float32 ulps at 128..255). On the reference it is 0.
CV2_ATOL = 3.1e-5

# Channels of IPP's paired edge columns whose vertical step is not fused (see the module doc).
_UNFUSED_EDGE_CHANNELS = {1: (), 3: (0, 1), 4: (0, 1, 2, 3)}


def resize_linear(img: torch.Tensor, height: int, width: int, rows: slice | None = None,
                  cols: slice | None = None) -> torch.Tensor:
    """cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR) of an (H, W, C) or (H, W) image,
    float32 or uint8 (converted to float32 first, as `img.astype(np.float32)`), C in 1, 3, 4, on img's device.

    Returns (height, width, C) float32, or only its window [rows, cols] ((len(rows), len(cols), C)), computed
    from the source pixels that window needs. A window is bit-identical to the same window of the full
    result. A 2-D input gives a 2-D result.
    """
    if img.dim() not in (2, 3):
        raise ValueError(f'expected an (H, W, C) or (H, W) image, got shape {tuple(img.shape)}')
    if img.dtype not in (torch.float32, torch.uint8):
        raise TypeError(f'expected a float32 or uint8 image, got {img.dtype}')
    if height < 1 or width < 1:
        raise ValueError(f'output size must be positive, got {height} x {width}')
    flat = img.dim() == 2
    src = img.to(torch.float32).unsqueeze(-1) if flat else img.to(torch.float32)
    n_rows, n_cols, channels = src.shape
    if channels not in _UNFUSED_EDGE_CHANNELS:
        raise ValueError(f'{channels} channels: cv2 takes its own code there (not reproduced); use 1, 3 or 4')
    out_rows = np.arange(height)[rows if rows is not None else slice(None)]
    out_cols = np.arange(width)[cols if cols is not None else slice(None)]
    if (height, width) == (n_rows, n_cols):
        out = _take(_take(src, 0, out_rows), 1, out_cols)             # cv2 copies
    elif n_rows == 1 or n_cols == 1:
        out = _resize_opencv(src, height, width, out_rows, out_cols)
    else:
        out = _resize_ipp(src, height, width, out_rows, out_cols)
    return out.squeeze(-1) if flat else out


def _take(x: torch.Tensor, dim: int, index: np.ndarray) -> torch.Tensor:
    """x.index_select(dim, index), the index made on x's device."""
    return x.index_select(dim, torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)).to(x.device))


def _weights(w: np.ndarray, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """float32 weights (K,) on `like`'s device, viewed as `shape` to broadcast along one axis."""
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(like.device).view(shape)


def _gather_rows(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source rows that taps lo (K,), hi (K,) read, sorted and unique, and each tap's position in them."""
    needed, position = np.unique(np.concatenate([lo, hi]), return_inverse=True)
    return needed, position[:lo.size], position[lo.size:]


def _ipp_taps(n: int, dn: int, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IPP's taps for the output pixels `out` (K,) of an n -> dn axis: (lo, hi) int64 (K,) and w float32 (K,)."""
    x = (out + 0.5) * (n / dn) - 0.5                  # double, multiply then subtract (no fused step)
    base = np.floor(x)
    w = (x - base).astype(np.float32)
    w[(base < 0) | (base >= n - 1)] = 0
    lo = np.clip(base, 0, n - 1).astype(np.int64)
    return lo, np.minimum(lo + 1, n - 1), w


def _ipp_unfused_columns(n: int, dn: int, out: np.ndarray) -> np.ndarray:
    """(K,) bool over the output columns `out`: True where IPP's vertical step is unfused (the paired columns
    of the leading and trailing runs whose source coordinate falls outside [0, n - 1))."""
    base = np.floor((np.arange(dn) + 0.5) * (n / dn) - 0.5)
    unfused = np.zeros(dn, bool)
    for run in (np.flatnonzero(base < 0), np.flatnonzero(base >= n - 1)):
        unfused[run[:run.size // 2 * 2]] = True
    return unfused[out]


def _resize_ipp(src: torch.Tensor, height: int, width: int, out_rows: np.ndarray,
                out_cols: np.ndarray) -> torch.Tensor:
    """IPP's resize of src (H, W, C) float32, H, W >= 2 -> rows `out_rows` x columns `out_cols` of the
    (height, width, C) result."""
    n_rows, n_cols, channels = src.shape
    lo_y, hi_y, w_y = _ipp_taps(n_rows, height, out_rows)
    lo_x, hi_x, w_x = _ipp_taps(n_cols, width, out_cols)
    needed, lo_y, hi_y = _gather_rows(lo_y, hi_y)
    band = _take(src, 0, needed)                                           # (R, W, C) source rows used
    p, q = _take(band, 1, lo_x), _take(band, 1, hi_x)                      # (R, K, C)
    t = _fma(_weights(w_x, src, (1, -1, 1)), q - p, p)                     # horizontal pass (R, K, C)
    p, q = _take(t, 0, lo_y), _take(t, 0, hi_y)                            # (M, K, C)
    wy = _weights(w_y, src, (-1, 1, 1))
    out = _fma(wy, q - p, p)                                               # vertical pass (M, K, C)
    cols = np.flatnonzero(_ipp_unfused_columns(n_cols, width, out_cols))
    chans = _UNFUSED_EDGE_CHANNELS[channels]
    if cols.size and chans:
        sub = (slice(None), torch.from_numpy(cols).to(src.device)[:, None],
               torch.tensor(chans, device=src.device)[None, :])
        pu, qu = p[sub], q[sub]                                            # (M, U, c)
        out[sub] = pu + wy * (qu - pu)                                     # product rounded, as IPP's edge code
    return out


def _opencv_taps(n: int, dn: int, out: np.ndarray,
                 clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's own taps (`hal::resize`, INTER_LINEAR) for the output pixels `out` (K,) of an n -> dn axis:
    (lo, hi) int64 (K,), (w0, w1) float32 (K,). The horizontal axis clamps weights (0 outside [0, n - 1));
    the vertical one clamps only the rows."""
    fx = ((out + 0.5) * (1.0 / (dn / n)) - 0.5).astype(np.float32)      # scale = 1 / inv_scale, in double
    base = np.floor(fx)
    f = fx - base                                                           # float32
    base = base.astype(np.int64)
    if clamp_weights:
        f[(base < 0) | (base >= n - 1)] = 0                                 # the taps are clipped below
    lo, hi = np.clip(base, 0, n - 1), np.clip(base + 1, 0, n - 1)
    return lo, hi, np.float32(1) - f, f


def _resize_opencv(src: torch.Tensor, height: int, width: int, out_rows: np.ndarray,
                   out_cols: np.ndarray) -> torch.Tensor:
    """OpenCV's own resize (used by cv2 for a source 1 pixel high or wide) of src (H, W, C) float32 -> rows
    `out_rows` x columns `out_cols` of the (height, width, C) result."""
    n_rows, n_cols, _ = src.shape
    lo_y, hi_y, w0_y, w1_y = _opencv_taps(n_rows, height, out_rows, clamp_weights=False)
    lo_x, hi_x, w0_x, w1_x = _opencv_taps(n_cols, width, out_cols, clamp_weights=True)
    needed, lo_y, hi_y = _gather_rows(lo_y, hi_y)
    band = _take(src, 0, needed)
    t = (_take(band, 1, lo_x) * _weights(w0_x, src, (1, -1, 1))
         + _take(band, 1, hi_x) * _weights(w1_x, src, (1, -1, 1)))             # horizontal pass (R, K, C)
    return (_take(t, 0, lo_y) * _weights(w0_y, src, (-1, 1, 1))
            + _take(t, 0, hi_y) * _weights(w1_y, src, (-1, 1, 1)))             # vertical pass (M, K, C)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fma(a, b, c) = round(a * b + c) with one rounding, for broadcastable float32 tensors.

    a * b is exact in float64; the float64 sum is rounded to odd (TwoSum gives its error; an inexact sum with
    an even last bit moves one ulp towards the exact value), which makes the final rounding to float32
    correct (53 >= 24 + 2 bits), as no double rounding can then land on a float32 tie.
    """
    prod = a.double() * b.double()
    addend = c.double()
    total = prod + addend
    back = total - prod
    error = (prod - (total - back)) + (addend - back)                      # TwoSum: exact = total + error
    inexact_even = (error != 0) & ((total.view(torch.int64) & 1) == 0)
    towards = torch.where(error > 0, torch.full_like(total, float('inf')), torch.full_like(total, float('-inf')))
    return torch.where(inexact_even, torch.nextafter(total, towards), total).to(torch.float32)
