"""Images and label maps for the final segmentation network: deeplab-pytorch's training augmentation and an
iteration-indexed sample stream (so a resumed or sharded run draws the very samples of an uninterrupted one).

Training sample (`augment_for_seg`): rescale by a factor drawn from `scales` (the reference's discrete
0.5, 0.75, 1, 1.25, 1.5; floor of H * s), image bilinear (OpenCV), labels nearest (PIL); pad bottom and right
to the crop with the mean colour and the ignore label; random crop; horizontal flip with probability 0.5;
then the network's input convention (`to_network_input`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from misc import imutils
from misc.cv_resize import resize_linear
from misc.device_input import imagenet_normalise, mean_subtract
from misc.imutils import IMAGENET_MEAN, IMAGENET_STD
from voc12.classes import IGNORE

IMG_DIR = 'JPEGImages'
# deeplab-pytorch's configs/voc12.yaml IMAGE.MEAN, in BGR order: DeepLab-v2's input is BGR minus this, no std
SEG_MEAN_BGR = (104.008, 116.669, 122.675)


def input_mean_rgb(bgr_mean: bool) -> np.ndarray:
    """The colour (RGB, 0..255) that becomes 0 in the network's input: pads are filled with it."""
    return np.asarray(SEG_MEAN_BGR[::-1] if bgr_mean else [255 * m for m in IMAGENET_MEAN], np.float32)


def to_network_input(img: np.ndarray, bgr_mean: bool) -> np.ndarray:
    """(H, W, 3) RGB, 0..255 (uint8 or float) -> (3, H, W) float32: mean-subtracted BGR without std
    (DeepLab-v2's Caffe convention) or ImageNet-normalised RGB (torchvision)."""
    img = np.asarray(img, np.float32)
    if bgr_mean:
        out = img[..., ::-1] - input_mean_rgb(True)[::-1]
    else:
        out = (img / 255.0 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def draw_seg_geometry(shape: Sequence[int], rng: np.random.Generator, crop: int, scales: Sequence[float],
                      flip: bool = True) -> tuple[int, int, int, int, int]:
    """`augment_for_seg`'s draws for an image of `shape` (H, W): (height, width, top, left, flip) of the rescaled,
    padded, cropped, flipped image."""
    scale = float(scales[int(rng.integers(len(scales)))])
    height, width = int(shape[0] * scale), int(shape[1] * scale)
    top = int(rng.integers(max(height, crop) - crop + 1))
    left = int(rng.integers(max(width, crop) - crop + 1))
    return height, width, top, left, int(bool(flip and rng.random() < 0.5))


def render_seg_crop(src: torch.Tensor, label: torch.Tensor, recipe: Sequence[int], crop: int, bgr_mean: bool) \
        -> tuple[torch.Tensor, torch.Tensor]:
    """The device half of a deferred sample: src (H, W, 3) and label (H, W) uint8 on the device with
    `draw_seg_geometry`'s recipe -> `augment_for_seg`'s ((3, crop, crop) float32 network input, (crop, crop)
    int64 labels): OpenCV's float bilinear resize of the crop's window only (misc.cv_resize), PIL's nearest
    for the labels, the mean colour and IGNORE where the crop passes the image, the flip, then
    `to_network_input`'s float32 operations in its order."""
    height, width, top, left, flipped = (int(v) for v in recipe)
    rows, cols = min(crop, height - top), min(crop, width - left)
    window = resize_linear(src, height, width, slice(top, top + rows), slice(left, left + cols))   # (rows, cols, 3)
    mean = torch.as_tensor(input_mean_rgb(bgr_mean), device=src.device)
    canvas = mean.expand(crop, crop, 3).clone()
    canvas[:rows, :cols] = window
    source_rows = torch.tensor(imutils.pil_nearest_indices(label.shape[0], height)[top:top + rows], device=src.device)
    source_cols = torch.tensor(imutils.pil_nearest_indices(label.shape[1], width)[left:left + cols], device=src.device)
    labels = torch.full((crop, crop), IGNORE, dtype=torch.int64, device=src.device)
    labels[:rows, :cols] = label.index_select(0, source_rows).index_select(1, source_cols)
    if flipped:
        canvas, labels = canvas.flip(1), labels.flip(1)
    chw = canvas.permute(2, 0, 1)[None]                                      # (1, 3, crop, crop) RGB
    if bgr_mean:
        out = mean_subtract(SEG_MEAN_BGR)(chw.flip(1))
    else:
        out = imagenet_normalise(chw)
    return out[0].contiguous(), labels


def render_deferred(batch: dict, device: torch.device, crop: int, bgr_mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, 3, crop, crop) float32 network inputs, (N, crop, crop) int64 labels) on `device` of a collated
    deferred batch ('seg_src', 'seg_label_src' lists, 'seg_recipe' (N, 5))."""
    pairs = [render_seg_crop(src.to(device, non_blocking=True), label.to(device, non_blocking=True), recipe, crop,
                             bgr_mean)
             for src, label, recipe in zip(batch['seg_src'], batch['seg_label_src'], batch['seg_recipe'].tolist())]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def augment_for_seg(img: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop: int,
                    scales: Sequence[float], bgr_mean: bool, flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """img (H, W, 3) uint8 RGB, label (H, W) uint8 -> ((3, crop, crop) float32 network input, (crop, crop)
    int64 labels with IGNORE in the padding)."""
    scale = float(scales[int(rng.integers(len(scales)))])
    height, width = int(label.shape[0] * scale), int(label.shape[1] * scale)
    image = cv2.resize(img.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    label = np.asarray(Image.fromarray(label).resize((width, height), resample=Image.NEAREST))
    pad_h, pad_w = max(crop - height, 0), max(crop - width, 0)
    if pad_h or pad_w:
        mean = input_mean_rgb(bgr_mean)
        image = np.concatenate([image, np.broadcast_to(mean, (height, pad_w, 3))], axis=1) if pad_w else image
        image = np.concatenate([image, np.broadcast_to(mean, (pad_h, image.shape[1], 3))], axis=0) if pad_h else image
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE)
    top = int(rng.integers(label.shape[0] - crop + 1))
    left = int(rng.integers(label.shape[1] - crop + 1))
    image, label = image[top:top + crop, left:left + crop], label[top:top + crop, left:left + crop]
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return to_network_input(image, bgr_mean), np.ascontiguousarray(label, dtype=np.int64)


class SegTrainDataset(Dataset):
    """Training crops of `ids` with their label maps from `label_dir/<id>.png` (pseudo masks, or the ground
    truth for the fully supervised bound). Items are requested as (index, iteration, slot) by `IterationSampler`;
    each sample's randomness comes from default_rng((seed, iteration, slot)).
    -> {'name', 'img' (3, crop, crop) float32, 'label' (crop, crop) int64}. `deferred` (a GPU run): the decoded
    'seg_src' (H, W, 3) and 'seg_label_src' (H, W) uint8 with the draws 'seg_recipe' (5,), from which
    `render_deferred` makes both on the device."""

    deferred = False

    def __init__(self, ids: Sequence[str], root: Path, label_dir: Path, crop: int, scales: Sequence[float],
                 bgr_mean: bool, seed: int = 0):
        self.ids, self.root, self.label_dir = list(ids), Path(root), Path(label_dir)
        self.crop, self.scales, self.bgr_mean, self.seed = crop, tuple(scales), bgr_mean, seed

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        index, iteration, slot = key
        image_id = self.ids[index]
        path = self.root / IMG_DIR / f'{image_id}.jpg'
        img = imutils.read_rgb_fast(path) if self.deferred else imutils.read_rgb(path)
        label = imutils.read_label_png(self.label_dir / f'{image_id}.png')
        if label.shape != img.shape[:2]:
            raise imutils.BadInputError(f'{self.label_dir / image_id}.png: label map {label.shape} differs from '
                                        f'its image {img.shape[:2]}; remake it (--overwrite)')
        rng = np.random.default_rng((self.seed, iteration, slot))
        if self.deferred:
            recipe = draw_seg_geometry(label.shape, rng, self.crop, self.scales)
            return {'name': image_id, 'seg_src': torch.from_numpy(img), 'seg_label_src': torch.from_numpy(label),
                    'seg_recipe': torch.tensor(recipe)}
        x, y = augment_for_seg(img, label, rng, self.crop, self.scales, self.bgr_mean)
        return {'name': image_id, 'img': torch.from_numpy(x), 'label': torch.from_numpy(y)}


def batch_indices(n: int, batch: int, iteration: int, seed: int) -> np.ndarray:
    """The dataset indices of the global batch of `iteration` (0-based): the stream is the concatenation of
    one permutation of range(n) per pass, each from default_rng((seed, pass)), cut into batches."""
    start = iteration * batch
    out = []
    while len(out) < batch:
        position = start + len(out)
        epoch, offset = divmod(position, n)
        perm = np.random.default_rng((seed, 7919, epoch)).permutation(n)
        out.extend(perm[offset:offset + batch - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


class IterationSampler(Sampler):
    """Yields (index, iteration, slot) for iterations [start, stop) of the global stream: this rank's chunks of
    each global batch. A global batch of B splits into world * accumulate chunks of B / (world * accumulate)
    in order; rank r takes chunks r * accumulate ... r * accumulate + accumulate - 1. So 2 processes of 1
    chunk see exactly what 1 process of 2 accumulated chunks sees."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1,
                 accumulate: int = 1):
        self.n, self.batch, self.seed, self.start, self.stop = n, batch, seed, start, stop
        self.rank, self.world, self.accumulate = rank, world, accumulate
        self.chunk = batch // (world * accumulate)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.chunk * self.accumulate

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        per_rank = self.chunk * self.accumulate
        for iteration in range(self.start, self.stop):
            indices = batch_indices(self.n, self.batch, iteration, self.seed)
            first = self.rank * per_rank
            for slot in range(first, first + per_rank):
                yield int(indices[slot]), iteration, slot


class SegInferenceDataset(Dataset):
    """Whole images at their own size: {'name', 'img' (3, H, W) float32 network input, 'rgb' (H, W, 3) uint8}.
    An unreadable image gives {'name', 'error': message} instead (the own-images command goes on)."""

    def __init__(self, paths: Sequence[Path], bgr_mean: bool, names: Optional[Sequence[str]] = None):
        self.paths = [Path(p) for p in paths]
        self.names = list(names) if names is not None else [p.stem for p in self.paths]
        self.bgr_mean = bgr_mean

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        try:
            rgb = imutils.read_rgb(self.paths[index])
        except imutils.BadInputError as e:
            return {'name': self.names[index], 'error': str(e)}
        return {'name': self.names[index], 'img': torch.from_numpy(to_network_input(rgb, self.bgr_mean)), 'rgb': rgb}
