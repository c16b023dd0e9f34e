"""Context Decoupling Augmentation: paste an object from the object bank onto another image.

The paste is built from small steps so that each can be tested (and reused by the benchmark):
crop the object to its mask, rotate it on an enlarged canvas (OpenCV affine warp, so nothing is cut),
optionally rescale, fit the canvas (empty corners included, as the reference does) inside the
background, and copy (or alpha-blend) the object's pixels at a random position. All randomness comes from the `numpy.random.Generator` the caller passes in, in a
fixed order (angle, scale, row, column), so a seed fully determines the result.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from misc.imutils import BadInputError, read_label_png, read_rgb

# The reference's three pastes, selected by --cda_variant.
VARIANTS: dict[str, dict[str, Any]] = {
    'rotate': dict(rotate=True),
    'scale': dict(rotate=False, scale_range=(0.8, 1.2)),
    'blur': dict(rotate=True, blur=True),
}


# ----------------------------------------------------------------------------- geometry helpers

def mask_bbox(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """(top, bottom, left, right), bottom/right exclusive, of the set pixels; None if none is set."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def crop_to_mask(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop an (h, w, C) image and its (h, w) bool mask to the mask's bounding box (mask must be non-empty)."""
    top, bottom, left, right = mask_bbox(mask)
    return image[top:bottom, left:right], mask[top:bottom, left:right]


def rotate_with_canvas(image: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate image and bool mask by `angle` degrees (counter-clockwise) about their centre, on a canvas
    enlarged to hold every rotated pixel. The image is bilinear with replicated borders (no black fringe
    at the cut edges); the mask is nearest-neighbour so it stays binary."""
    height, width = mask.shape
    cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    # round() first: cos(90 deg) is 6e-17, not 0, and must not add a pixel.
    new_w = max(1, math.ceil(round(width * cos + height * sin, 6)))
    new_h = max(1, math.ceil(round(width * sin + height * cos, 6)))
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, 1.0)
    # Move the source centre onto the centre of the enlarged canvas.
    matrix[0, 2] += (new_w - width) / 2.0
    matrix[1, 2] += (new_h - height) / 2.0
    rotated = cv2.warpAffine(np.ascontiguousarray(image), matrix, (new_w, new_h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
    rotated_mask = cv2.warpAffine(mask.astype(np.uint8), matrix, (new_w, new_h), flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if rotated.ndim == 2 and image.ndim == 3:    # OpenCV drops a trailing channel axis of size 1
        rotated = rotated[..., None]
    return rotated, rotated_mask.astype(bool)


def resize_object(image: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize image and bool mask to (height, width) (each at least 1). Area averaging when shrinking,
    bilinear when growing; the mask is resampled as a fraction and thresholded at one half, keeping
    its strongest pixel if a thin mask would otherwise vanish."""
    height, width = max(1, int(height)), max(1, int(width))
    if (height, width) == mask.shape:
        return image, mask
    shrink = height * width < mask.size
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=interpolation)
    if resized.ndim == 2 and image.ndim == 3:
        resized = resized[..., None]
    coverage = cv2.resize(mask.astype(np.float32), (width, height), interpolation=interpolation)
    resized_mask = coverage >= 0.5
    if not resized_mask.any():
        resized_mask.flat[int(np.argmax(coverage))] = True
    return resized, resized_mask


def fit_size(height: int, width: int, bg_height: int, bg_width: int, max_ratio: float) -> tuple[int, int]:
    """Size that fits an object inside max_ratio of the background: first the height, then the width
    (the reference's order), keeping the aspect ratio, never above the background, at least 1 px."""
    limit_h = min(bg_height, max(1, int(max_ratio * bg_height)))
    limit_w = min(bg_width, max(1, int(max_ratio * bg_width)))
    if height > limit_h:
        width = max(1, round(width * limit_h / height))
        height = limit_h
    if width > limit_w:
        height = max(1, round(height * limit_w / width))
        width = limit_w
    return height, width


def soft_alpha(mask: np.ndarray) -> np.ndarray:
    """(h, w) float32 alpha in [0, 1]: the mask with its edge softened by a 3x3 Gaussian."""
    return cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0, borderType=cv2.BORDER_CONSTANT)


# ----------------------------------------------------------------------------- the paste

def paste_object(background: np.ndarray, obj_img: np.ndarray, obj_mask: np.ndarray, rng: np.random.Generator, *,
                 rotate: bool = True, max_rotation: int = 90, max_ratio: float = 0.7,
                 scale_range: Optional[tuple[float, float]] = None,
                 blur: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Paste the masked object onto a copy of the background.

    background (H, W, 3), obj_img (h, w, 3), obj_mask (h, w) bool. Returns the new (H, W, 3) image (same
    dtype as the background; the inputs are not modified) and the (H, W) bool mask of pasted pixels.
    An empty object mask returns an unchanged copy and an all-False mask.
    """
    background = np.asarray(background)
    obj_img = np.asarray(obj_img)
    obj_mask = np.asarray(obj_mask).astype(bool)
    if obj_img.shape[:2] != obj_mask.shape:
        raise ValueError(f'object image {obj_img.shape} and mask {obj_mask.shape} differ in size')
    if obj_img.shape[2:] != background.shape[2:]:
        raise ValueError(f'object image {obj_img.shape} and background {background.shape} differ in channels')
    out = np.array(background, copy=True, order='C')
    bg_height, bg_width = background.shape[:2]
    pasted = np.zeros((bg_height, bg_width), dtype=bool)
    if bg_height == 0 or bg_width == 0 or not obj_mask.any():
        return out, pasted

    image, mask = crop_to_mask(obj_img, obj_mask)
    # Drawn only when it can matter, so max_rotation=0 gives exactly the unrotated paste.
    if rotate and max_rotation != 0:
        angle = int(rng.integers(-abs(max_rotation), abs(max_rotation) + 1))
        if angle != 0:
            rotated, rotated_mask = rotate_with_canvas(image, mask, angle)
            # The reference sizes and places the whole enlarged canvas, its empty corners included, so a
            # rotated object is not re-cropped to its mask here: the size cap below applies to the canvas.
            if rotated_mask.any():      # a one-pixel mask can fall between pixel centres: keep it upright
                image, mask = rotated, rotated_mask
    if scale_range is not None:
        factor = float(rng.uniform(scale_range[0], scale_range[1]))
        image, mask = resize_object(image, mask, round(mask.shape[0] * factor), round(mask.shape[1] * factor))
    image, mask = resize_object(image, mask, *fit_size(*mask.shape, bg_height, bg_width, max_ratio))

    height, width = mask.shape
    top = int(rng.integers(0, bg_height - height + 1))
    left = int(rng.integers(0, bg_width - width + 1))
    region = out[top:top + height, left:left + width]   # a view: writes go into `out`
    if blur:
        alpha = soft_alpha(mask)
        alpha_c = alpha[..., None] if region.ndim == 3 else alpha
        mixed = alpha_c * image.astype(np.float32) + (1.0 - alpha_c) * region.astype(np.float32)
        if np.issubdtype(out.dtype, np.integer):
            info = np.iinfo(out.dtype)
            mixed = np.clip(np.rint(mixed), info.min, info.max)
        region[...] = mixed.astype(out.dtype)
        pasted[top:top + height, left:left + width] = alpha > 0.5
    else:
        np.copyto(region, image, where=mask[..., None] if region.ndim == 3 else mask)   # region[mask] = image[mask]
        pasted[top:top + height, left:left + width] = mask
    return out, pasted


# ----------------------------------------------------------------------------- the object bank

class ObjectBank:
    """Object crops written by step/make_object_bank.py, grouped by class index (0..19)."""

    def __init__(self, bank_dir: Path, entries: list[dict[str, Any]], cache_size: int = 128):
        self.bank_dir = Path(bank_dir)
        self.entries = entries
        self._by_class: dict[int, list[int]] = {}
        for position, entry in enumerate(entries):
            self._by_class.setdefault(int(entry['class']), []).append(position)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def load(cls, bank_dir: Path, cache_size: int = 128) -> 'ObjectBank':
        bank_dir = Path(bank_dir)
        index_path = bank_dir / 'index.json'
        if not index_path.is_file():
            raise BadInputError(f'{bank_dir}: no object bank here (index.json missing); run the make_object_bank '
                                'step first')
        try:
            entries = json.loads(index_path.read_text())
            if not isinstance(entries, list) or not all(isinstance(e, dict) and {'class', 'image', 'mask'} <= set(e)
                                                        for e in entries):
                raise ValueError('expected a list of {"class", "image", "mask", ...} objects')
        except ValueError as e:
            raise BadInputError(f'{index_path}: unreadable object bank index ({e}); rebuild it with make_object_bank '
                                '--overwrite') from None
        if not entries:
            raise BadInputError(f'{bank_dir}: the object bank is empty (no single-class mask passed the filter); '
                                'widen --cda_min_fg_ratio/--cda_max_fg_ratio, or pass --cda_bank_source with other '
                                'masks')
        return cls(bank_dir, entries, cache_size)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def classes(self) -> list[int]:
        """Sorted class indices (0..19) that have at least one object."""
        return sorted(self._by_class)

    def count(self, cls: int) -> int:
        return len(self._by_class.get(int(cls), ()))

    def sample(self, cls: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A uniformly chosen object of class `cls`: (h, w, 3) uint8 image and (h, w) bool mask (copies)."""
        positions = self._by_class.get(int(cls))
        if not positions:
            raise KeyError(f'object bank {self.bank_dir} has no object of class {cls}; classes: {self.classes}')
        image, mask = self._read(positions[int(rng.integers(len(positions)))])
        return image.copy(), mask.copy()

    def _read(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        if position in self._cache:
            self._cache.move_to_end(position)
            return self._cache[position]
        entry = self.entries[position]
        image_path, mask_path = self.bank_dir / entry['image'], self.bank_dir / entry['mask']
        for path in (image_path, mask_path):
            if not path.is_file():
                raise BadInputError(f'{path}: object bank file missing; rebuild the bank with make_object_bank '
                                    '--overwrite')
        image = read_rgb(image_path)
        mask = read_label_png(mask_path) > 127
        if image.shape[:2] != mask.shape:
            raise BadInputError(f'{image_path}: image {image.shape[:2]} and mask {mask.shape} differ in size; '
                                'rebuild the bank with make_object_bank --overwrite')
        self._cache[position] = (image, mask)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return image, mask
