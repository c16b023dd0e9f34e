"""Time `misc.cda.paste_object` (OpenCV affine rotation) against a spline-rotation paste.

The baseline rotates with scipy.ndimage.rotate (order 3 for the image, order 0 for the mask,
reshape=True), then crops, fits and pastes exactly as paste_object does, drawing the same angle and
position from the same seed, so both produce the same paste up to resampling. Both run in this
process, single-threaded (OpenCV's thread pool is set to one thread so the comparison is per core,
as in a DataLoader worker).

    python benchmarks/paste.py [--repeats 30]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from misc.cda import crop_to_mask, fit_size, paste_object, resize_object  # noqa: E402

BACKGROUND = (375, 500)                       # a typical VOC image
OBJECT_SIZES = ((100, 80), (200, 150), (300, 250))
TARGET_SPEEDUP = 3.0


def spline_paste(background: np.ndarray, obj_img: np.ndarray, obj_mask: np.ndarray, rng: np.random.Generator,
                 max_rotation: int = 90, max_ratio: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """The slow way: spline rotation on a reshaped canvas, then the same crop, fit and paste."""
    out = background.copy()
    image, mask = crop_to_mask(obj_img, obj_mask)
    angle = int(rng.integers(-max_rotation, max_rotation + 1))
    if angle != 0:
        image = ndimage.rotate(image, angle, axes=(1, 0), reshape=True, order=3, mode='nearest')
        mask = ndimage.rotate(mask.astype(np.uint8), angle, axes=(1, 0), reshape=True, order=0) > 0
        image, mask = crop_to_mask(image, mask)
    image, mask = resize_object(image, mask, *fit_size(*mask.shape, *background.shape[:2], max_ratio))
    height, width = mask.shape
    top = int(rng.integers(0, background.shape[0] - height + 1))
    left = int(rng.integers(0, background.shape[1] - width + 1))
    pasted = np.zeros(background.shape[:2], bool)
    out[top:top + height, left:left + width][mask] = image[mask]
    pasted[top:top + height, left:left + width] = mask
    return out, pasted


def make_object(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random texture with an elliptical mask filling its box."""
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (7, 7), 0)
    rows, cols = np.mgrid[:height, :width]
    mask = (((rows - (height - 1) / 2) / (height / 2)) ** 2 + ((cols - (width - 1) / 2) / (width / 2)) ** 2) <= 1
    return image, mask


def time_pastes(paste, background, obj, seeds) -> tuple[float, list[int]]:
    """Milliseconds per paste (best of three rounds over all seeds) and the pasted areas."""
    areas = [int(paste(background, *obj, np.random.default_rng(seed))[1].sum()) for seed in seeds]
    best = float('inf')
    for _ in range(3):
        start = time.perf_counter()
        for seed in seeds:
            paste(background, *obj, np.random.default_rng(seed))
        best = min(best, time.perf_counter() - start)
    return best / len(seeds) * 1e3, areas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=30, help='pastes (seeds) per object size per round')
    args = parser.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, BACKGROUND + (3,), dtype=np.uint8)
    seeds = range(args.repeats)

    print(f'background {BACKGROUND[0]}x{BACKGROUND[1]}, {args.repeats} pastes per size, best of 3 rounds, '
          f'angles uniform in [-90, 90], OpenCV {cv2.__version__} on 1 thread')
    print(f'{"object":>9} {"opencv ms":>10} {"spline ms":>10} {"speedup":>8} {"area diff":>10}')
    total_fast = total_slow = 0.0
    areas_ok = True
    for height, width in OBJECT_SIZES:
        obj = make_object(height, width, rng)
        fast_ms, fast_areas = time_pastes(paste_object, background, obj, seeds)
        slow_ms, slow_areas = time_pastes(spline_paste, background, obj, seeds)
        # Same seeds -> same angle and same fit: the areas differ only by resampling of the mask edge.
        worst = max(abs(a - b) / max(b, 1) for a, b in zip(fast_areas, slow_areas))
        areas_ok &= worst <= 0.10
        total_fast += fast_ms
        total_slow += slow_ms
        print(f'{height:>4}x{width:<4} {fast_ms:>10.3f} {slow_ms:>10.3f} {slow_ms / fast_ms:>7.1f}x {worst:>9.1%}')
    speedup = total_slow / total_fast
    print(f'{"mean":>9} {total_fast / len(OBJECT_SIZES):>10.3f} {total_slow / len(OBJECT_SIZES):>10.3f} '
          f'{speedup:>7.1f}x')
    print(f'pasted areas within 10% of the spline paste: {"yes" if areas_ok else "NO"}')
    met = speedup >= TARGET_SPEEDUP
    print(f'target >= {TARGET_SPEEDUP:.0f}x faster than the spline paste: {"met" if met else "NOT met"} '
          f'({speedup:.1f}x)')
    return 0 if met and areas_ok else 1


if __name__ == '__main__':
    sys.exit(main())
