"""Image reading, writing and the geometric augmentations of the reference pipeline.

Resizing goes through PIL so that bicubic/nearest results match the reference's `pil_rescale`;
every file is written atomically (temporary file in the same folder, then `os.replace`) so that a
killed run never leaves a half-written output that a later step would read.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BadInputError(Exception):
    """Input data the pipeline cannot use; the message names the file and the fix."""


# ----------------------------------------------------------------------------- files

@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp' + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_label_png(path: str | os.PathLike, label: np.ndarray, palette: Optional[Sequence[int]] = None) -> None:
    """Write an (H, W) uint8 label map as a PNG: a palette image with `palette` (flat [r, g, b, ...], e.g.
    `DatasetInfo.palette`), grayscale without one. The stored values are the labels either way."""
    image = Image.fromarray(np.asarray(label, dtype=np.uint8), mode='L' if palette is None else 'P')
    if palette is not None:
        image.putpalette(list(palette))
    with atomic_path(path) as tmp:
        image.save(tmp, format='PNG')


def save_rgb(path: str | os.PathLike, image: np.ndarray) -> None:
    path = Path(path)
    fmt = 'JPEG' if path.suffix.lower() in ('.jpg', '.jpeg') else 'PNG'
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp, format=fmt, quality=95)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            np.savez(f, **arrays)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 class indices of a palette or grayscale PNG (palette colours are not decoded)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ('P', 'L'):
                raise BadInputError(f'{path}: label PNG has mode {image.mode}; expected a palette (P) or '
                                    f'8-bit grayscale (L) image of class indices')
            return np.asarray(image, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise BadInputError(f'{path}: label file not found') from None
    except (OSError, SyntaxError) as e:
        raise BadInputError(f'{path}: cannot read label PNG ({e}); regenerate or remove it') from None


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB. Grayscale, CMYK, palette, RGBA (alpha dropped) and 16-bit images are
    converted; unreadable or truncated files raise BadInputError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
                # 16-bit samples scaled to 8 bits over their full range (65535 -> 255)
                array = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257.0
                return np.repeat(array.round().astype(np.uint8)[..., None], 3, axis=2)
            if image.mode != 'RGB':
                image = image.convert('RGB')
            array = np.asarray(image, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise BadInputError(f'{path}: image file not found; check --voc12_root and the list file') from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInputError(f'{path}: cannot decode image ({e}); replace the file or drop it from the list') \
            from None
    if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise BadInputError(f'{path}: image has shape {array.shape}; expected (H, W, 3)')
    return array


def read_rgb_image(path: str | os.PathLike) -> Image.Image:
    """`read_rgb` as an RGB PIL image, for sample pipelines that resize, flip and crop in PIL: an RGB file is
    decoded once and not copied into an array; other modes (and unreadable files, which raise as there) go
    through `read_rgb`."""
    try:
        image = Image.open(path)
        image.load()                          # reads the file and closes it (single-frame formats)
    except Exception:
        image = None
    if image is None or image.mode != 'RGB' or min(image.size) == 0:
        return Image.fromarray(read_rgb(path))
    return image


@lru_cache(maxsize=4096)
def pil_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """(out_size,) int64, read-only: the source position that PIL's NEAREST resize copies to each output position
    of one axis, found by resizing a row of the positions themselves. PIL's nearest scaling is separable, so
    `img[rows][:, cols]` with these for both axes is `Image.resize(..., NEAREST)` of an (H, W[, C]) array."""
    if in_size == out_size:
        out = np.arange(out_size, dtype=np.int64)
    else:
        positions = Image.fromarray(np.arange(in_size, dtype=np.float32)[None])       # mode F: exact below 2^24
        out = np.asarray(positions.resize((out_size, 1), Image.NEAREST))[0].astype(np.int64)
    out.flags.writeable = False
    return out


def read_rgb_fast(path: str | os.PathLike) -> np.ndarray:
    """`read_rgb`, for the samples a GPU renders (the deferred ones): an RGB JPEG is decoded by OpenCV straight
    into the array (a quarter faster than Pillow's decode and copy, and the same pixels: both take
    libjpeg-turbo's accurate integer IDCT and fancy upsampling; checked on baseline, progressive and every
    chroma subsampling in tests/test_loader.py), EXIF orientation ignored as Pillow does; other files, and any
    OpenCV cannot read, go through `read_rgb`."""
    import cv2
    try:
        with Image.open(path) as image:                  # the header only: format and mode
            plain_jpeg = image.format == 'JPEG' and image.mode == 'RGB'
    except Exception:
        plain_jpeg = False                               # read_rgb names the file and the problem
    if plain_jpeg:
        array = cv2.imread(str(path), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
        if array is not None:
            return array
    return read_rgb(path)


def pil_crop(image: Image.Image, box: Sequence[int], crop: int) -> Image.Image:
    """`apply_crop` with fill 0 on a PIL image: PIL's crop fills the part of the box outside the image with 0."""
    left, top = box[6] - box[2], box[4] - box[0]
    return image.crop((left, top, left + crop, top + crop))


# ----------------------------------------------------------------------------- resizing

def pil_resize(img: np.ndarray, size: Sequence[int], order: int) -> np.ndarray:
    """Resize an (H, W[, C]) array to size (h, w); order 3 bicubic, 0 nearest (as the reference)."""
    if tuple(size) == tuple(img.shape[:2]):
        return img
    resample = {3: Image.BICUBIC, 0: Image.NEAREST, 1: Image.BILINEAR}[order]
    return np.asarray(Image.fromarray(img).resize((int(size[1]), int(size[0])), resample=resample))


def pil_rescale(img: np.ndarray, scale: float, order: int) -> np.ndarray:
    height, width = img.shape[:2]
    target = (int(np.round(height * scale)), int(np.round(width * scale)))
    return pil_resize(img, target, order)


def random_resize_long(img: np.ndarray, min_long: int, max_long: int, rng: np.random.Generator) -> np.ndarray:
    target_long = int(rng.integers(min_long, max_long + 1))
    height, width = img.shape[:2]
    scale = target_long / max(height, width)
    return pil_rescale(img, scale, 3)


def random_scale(images: Sequence[np.ndarray], scale_range: Sequence[float], orders: Sequence[int],
                 rng: np.random.Generator) -> list[np.ndarray]:
    scale = scale_range[0] + rng.random() * (scale_range[1] - scale_range[0])
    return [pil_rescale(img, scale, order) for img, order in zip(images, orders)]


def random_lr_flip(images: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    if rng.random() > 0.5:
        return [np.fliplr(img) for img in images]
    return list(images)


def random_crop_box(size: Sequence[int], crop: int, rng: np.random.Generator) -> tuple[int, ...]:
    """(cont_top, cont_bottom, cont_left, cont_right, img_top, img_bottom, img_left, img_right):
    where the crop lands in the crop canvas and where it comes from in the image (the reference's box)."""
    height, width = size
    crop_h, crop_w = min(crop, height), min(crop, width)
    h_space, w_space = height - crop, width - crop
    if w_space > 0:
        cont_left, img_left = 0, int(rng.integers(w_space + 1))
    else:
        cont_left, img_left = int(rng.integers(-w_space + 1)), 0
    if h_space > 0:
        cont_top, img_top = 0, int(rng.integers(h_space + 1))
    else:
        cont_top, img_top = int(rng.integers(-h_space + 1)), 0
    return (cont_top, cont_top + crop_h, cont_left, cont_left + crop_w,
            img_top, img_top + crop_h, img_left, img_left + crop_w)


def apply_crop(img: np.ndarray, box: Sequence[int], crop: int, fill: float) -> np.ndarray:
    canvas = np.full((crop, crop) + img.shape[2:], fill, dtype=img.dtype)
    canvas[box[0]:box[1], box[2]:box[3]] = img[box[4]:box[5], box[6]:box[7]]
    return canvas


def random_crop(images: Sequence[np.ndarray], crop: int, fills: Sequence[float],
                rng: np.random.Generator) -> list[np.ndarray]:
    """One random crop box for all `images`, padded with `fills` where the image is smaller."""
    box = random_crop_box(images[0].shape[:2], crop, rng)
    return [apply_crop(img, box, crop, fill) for img, fill in zip(images, fills)]


def top_left_crop(img: np.ndarray, crop: int, fill: float) -> np.ndarray:
    height, width = img.shape[:2]
    box = (0, min(crop, height), 0, min(crop, width), 0, min(crop, height), 0, min(crop, width))
    return apply_crop(img, box, crop, fill)


def normalize(img: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 ImageNet-normalised (H, W, 3)."""
    img = np.asarray(img, dtype=np.float32) / 255.0
    return ((img - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def hwc_to_chw(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(img, (2, 0, 1)))


def strided_size(size: Sequence[int], stride: int) -> tuple[int, int]:
    return (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1


def strided_up_size(size: Sequence[int], stride: int) -> tuple[int, int]:
    h, w = strided_size(size, stride)
    return h * stride, w * stride
