"""Compact training samples expanded on the training device: uint8 images normalised there, pair labels
gathered there from the small label map they come from.

A dataset in compact mode (`dataset.compact = True`, which `step.common.train_loader` sets) returns, in
place of today's float32 (3, crop, crop) image and float32 (P, S) pair labels:

  'img'             (crop, crop, 3) uint8, HWC as decoded (a quarter of the float32 bytes, no transpose)
  'img_valid'       (4,) int64 (top, bottom, left, right): the rectangle of the crop holding image pixels.
                    Today's crops pad with 0 *after* normalisation, a value uint8 cannot hold, so the padding
                    is set to 0 again after normalising here. Absent where the padding is raw black, which
                    normalises to the same value in both paths (AffinityNet's crop).
  'aug_img', 'aug_img_valid'     the same for CDA's pasted image
  'pair_label_map'  (h, w) uint8 label map (0 background, 1..20, 255 ignore) whose pixel pairs give
                    'aff_bg_pos_label', 'aff_fg_pos_label', 'aff_neg_label' (the dataset's `pair_labels`)

A deferred sample (`dataset.deferred = True` as well, which `train_loader` sets on a GPU run) goes one step
further: in place of 'img' it carries the decoded image 'img_src' and its draws 'img_recipe', 'img_jitter', and
`to_device` renders the crop on the device first (misc/device_augment.py: Pillow's bicubic resize and
torchvision's colour jitter reproduced bit for bit), so a worker only decodes. Such batches are collated by
`collate` (the sources differ in size).

`to_device(batch, device, pair_labels)` is the one call a training step makes on each batch: it moves the
compact tensors (pinned by the loader) and expands them, and it passes batches of today's float samples
through, moved, so the same loop runs either kind. Every operation is elementwise or a gather, so the
result is bit-identical to the CPU pipeline's on CPU; on CUDA the divisions use device tensors (torch
turns a division by a CPU scalar into a multiplication by its reciprocal, which can differ in the last
bit), so there too each value is the correctly rounded float32 of the same three operations.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from misc.device_augment import crf_label_maps, render_batch
from misc.imutils import IMAGENET_MEAN, IMAGENET_STD

PAIR_LABEL_KEYS = ('aff_bg_pos_label', 'aff_fg_pos_label', 'aff_neg_label')
IMAGE_KEYS = ('img', 'aug_img')
DEFERRED_SUFFIXES = ('_src', '_recipe', '_jitter')     # 'img_src', 'la_src', 'label_recipe', ...


def collate(samples: Sequence[dict]) -> dict:
    """default_collate, except that deferred sources ('img_src', 'aug_img_src': images of different sizes)
    stay lists of tensors (the DataLoader pins each one)."""
    sources = [key for key in samples[0] if key.endswith('_src')]
    out = default_collate([{k: v for k, v in sample.items() if k not in sources} for sample in samples])
    out.update({key: [sample[key] for sample in samples] for key in sources})
    return out


def _constant(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """(1, C, 1, 1) float32 tensor on `like`'s device (a device tensor, not a CPU scalar: see the module doc)."""
    return torch.tensor(values, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)


def imagenet_normalise(img: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(N, 3, H, W) float32 of uint8 values -> ((x / 255) - mean) / std, the three float32 operations of
    `misc.imutils.normalize` in its order."""
    img = img / torch.full((1,), 255.0, dtype=torch.float32, device=img.device)
    return (img - _constant(mean, img)) / _constant(std, img)


def mean_subtract(mean: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> x - mean (per channel, in the image's channel order): deeplab-pytorch's input (mean BGR)."""
    return lambda img: img - _constant(mean, img)


def valid_mask(valid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 4) int (top, bottom, left, right) -> (N, 1, H, W) bool, True inside each rectangle."""
    rows = torch.arange(height, device=valid.device).view(1, 1, height, 1)
    cols = torch.arange(width, device=valid.device).view(1, 1, 1, width)
    top, bottom, left, right = (valid[:, i].view(-1, 1, 1, 1) for i in range(4))
    return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def expand_image(img: torch.Tensor, valid: Optional[torch.Tensor] = None,
                 normalise: Callable[[torch.Tensor], torch.Tensor] = imagenet_normalise) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, contiguous: `normalise`d, 0 outside `valid` (N, 4)."""
    out = normalise(img.permute(0, 3, 1, 2).contiguous().to(torch.float32))     # transpose the bytes, not floats
    if valid is not None:
        out.masked_fill_(~valid_mask(valid.to(out.device), out.shape[2], out.shape[3]), 0.0)
    return out


class PairLabels:
    """AffinityNet / IRN pair labels of label maps, batched in torch: the same values as
    `voc12.dataloader.GetAffinityLabelFromIndices`, for a batch at once and on any device.

    src (S,) and dst (P, S) flat indices into an (h, w) map; a call on maps (N, h, w) uint8 returns
    (bg_pos, fg_pos, neg), each (N, P, S) float32: same label and background, same foreground label,
    different labels; pairs touching a label >= `num_labels` (255, ignore; 21 on VOC, 81 on COCO) are in none.

    The pairs of `misc.indexing.PathIndex` and `pair_indices` are windows: the sources a rectangle of the
    map, each destination row the same rectangle shifted by one offset. On the CPU such pairs are read as P
    slices of the map (one copy of the (N, P, S) bytes; numpy-style gathers cost 5-20x that there); on other
    devices, and for any other indices, they are gathered (`index_select`, one kernel, the index tensors made
    once per device). The structure is checked once per map size.
    """

    def __init__(self, src: np.ndarray, dst: np.ndarray, num_labels: int = 21):
        self.num_labels = num_labels
        self.src = torch.as_tensor(np.asarray(src), dtype=torch.int64).reshape(-1)
        self.dst = torch.as_tensor(np.asarray(dst), dtype=torch.int64).reshape(-1, self.src.numel())
        self._on: dict = {}
        self._windows: dict = {}

    def __getstate__(self) -> dict:           # workers get the CPU indices only
        return {'src': self.src, 'dst': self.dst, 'num_labels': self.num_labels}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state['src'], state['dst'], state.get('num_labels', 21))

    def _indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            self._on[device] = (self.src.to(device), self.dst.reshape(-1).to(device))
        return self._on[device]

    def windows(self, height: int, width: int):
        """(top, left, rows, cols, [(dy, dx)] * P) when src is the rectangle [top, top + rows) x [left, left +
        cols) of an (height, width) map and dst[p] the same rectangle moved by (dy, dx) inside the map; else None."""
        if (height, width) not in self._windows:
            self._windows[height, width] = _find_windows(self.src.numpy(), self.dst.numpy(), height, width)
        return self._windows[height, width]

    def __call__(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, height, width = maps.shape
        plan = self.windows(height, width) if maps.device.type == 'cpu' else None    # CUDA: one gather kernel
        if plan is not None:
            top, left, rows, cols, offsets = plan
            label_from = maps[:, top:top + rows, left:left + cols].reshape(n, 1, -1)           # (N, 1, S)
            label_to = torch.stack([maps[:, top + dy:top + dy + rows, left + dx:left + dx + cols]
                                    for dy, dx in offsets], dim=1).reshape(n, len(offsets), -1)  # (N, P, S)
        else:
            src, dst = self._indices(maps.device)
            flat = maps.reshape(n, -1)
            label_from = flat.index_select(1, src).unsqueeze(1)
            label_to = flat.index_select(1, dst).view(n, *self.dst.shape)
        if maps.device.type == 'cpu':       # numpy's elementwise logic and bool->float32 are 2-5x torch's here
            return tuple(torch.from_numpy(x.astype(np.float32))
                         for x in _pair_logic(label_from.numpy(), label_to.numpy(), self.num_labels))
        return tuple(x.to(torch.float32) for x in _pair_logic(label_from, label_to, self.num_labels))


def _pair_logic(label_from, label_to, num_labels: int = 21):
    """(bg_pos, fg_pos, neg) bool masks of source labels (N, 1, S) against partner labels (N, P, S), numpy
    arrays or torch tensors (the same operators); labels from `num_labels` on are void."""
    from_valid = label_from < num_labels
    equal = label_from == label_to
    bg_pos = equal & (label_from == 0)                 # equal to a background source: both valid
    fg_pos = equal & (label_from > 0) & from_valid
    neg = ~equal & (label_to < num_labels) & from_valid
    return bg_pos, fg_pos, neg


def _find_windows(src: np.ndarray, dst: np.ndarray, height: int, width: int):
    """`PairLabels.windows` for index arrays src (S,), dst (P, S); None where they are not windows."""
    if src.size == 0 or src.min() < 0 or dst.max(initial=0) >= height * width:
        return None
    top, left = divmod(int(src[0]), width)
    cols = int(np.argmax(np.diff(src) != 1)) + 1 if np.any(np.diff(src) != 1) else src.size
    rows = src.size // cols
    grid = np.arange(height * width).reshape(height, width)
    if rows * cols != src.size or top + rows > height or left + cols > width or \
            not np.array_equal(grid[top:top + rows, left:left + cols].reshape(-1), src):
        return None
    offsets = []
    for row in dst:
        shift = int(row[0] - src[0])
        dx = (shift + width // 2) % width - width // 2
        dy = (shift - dx) // width
        if not (0 <= top + dy and top + dy + rows <= height and 0 <= left + dx and left + dx + cols <= width):
            return None
        if not np.array_equal(row, src + shift):
            return None
        offsets.append((dy, dx))
    return top, left, rows, cols, offsets


def pair_labels_of(loader) -> Optional[PairLabels]:
    """The `pair_labels` of a DataLoader's dataset; None for a dataset without them or a plain iterable."""
    return getattr(getattr(loader, 'dataset', None), 'pair_labels', None)


def to_device(batch: dict, device: torch.device, pair_labels: Optional[PairLabels] = None,
              normalise: Callable[[torch.Tensor], torch.Tensor] = imagenet_normalise) -> dict:
    """A collated batch with its images (and pair labels) on `device`, as the training step consumes them.

    Compact batches (uint8 'img' / 'aug_img', 'pair_label_map') are expanded on the device (see the module
    doc; `pair_labels` is the dataset's `pair_labels`); float batches are moved as they are. Other entries
    are left as they come. Returns a new dict.
    """
    out = {key: value for key, value in batch.items() if not key.endswith(DEFERRED_SUFFIXES)}
    for key in IMAGE_KEYS:
        if f'{key}_src' in batch:
            img = render_batch(batch[f'{key}_src'], batch[f'{key}_recipe'], batch.get(f'{key}_jitter'), device)
        elif key in batch:
            img = batch[key].to(device, non_blocking=True)
        else:
            continue
        if img.dtype == torch.uint8:
            valid = batch.get(f'{key}_valid')
            img = expand_image(img, None if valid is None else valid.to(device, non_blocking=True), normalise)
        out[key] = img
    label_map = batch.get('pair_label_map')
    if label_map is None and 'la_src' in batch:          # AffinityNet's deferred sample: labels from its CRF maps
        label_map = crf_label_maps(batch['la_src'], batch['ha_src'], batch['label_recipe'], device)
    if label_map is not None:
        if pair_labels is None:
            raise ValueError('a batch with pair_label_map needs the pair_labels of its dataset')
        out.update(zip(PAIR_LABEL_KEYS, pair_labels(label_map.to(device, non_blocking=True))))
    else:
        for key in PAIR_LABEL_KEYS:
            if key in batch:
                out[key] = batch[key].to(device, non_blocking=True)
    return out
