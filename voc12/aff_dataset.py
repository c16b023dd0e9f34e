"""AffinityNet training samples: image, and pair labels from the soft low/high-alpha CRF maps.

Per sample, as the reference (`psa/voc12/data.py`, `psa/train_aff.py`): colour jitter (0.3, 0.3, 0.3, 0.1)
on the uint8 image; one random crop box (`crop_size`, no rescaling) for the image and the stacked la/ha
marginals, taken on raw pixel values (padding is raw 0, i.e. black after normalisation, and 0 in every
label channel); ImageNet normalisation; one horizontal flip for both; the marginals averaged over the 8 x 8
blocks of the crop; then `confident_label` and the pair labels of radius 5 at stride 8.

Every draw comes from the sample's own generator (seed, epoch, index), as the other datasets here.

Compact samples (misc/device_input.py) stop before the normalisation and the pair labels: the uint8 crop
(its padding is raw 0 in both paths, so no validity rectangle is needed) and the (crop/8, crop/8) label map.
They crop (and flip) the float16 marginals straight into a (2(K + 1), crop, crop) float32 canvas: the values
and the contiguous layout that `block_mean` sees are the old path's, so the pooled maps are bit-identical.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from misc import imutils
from misc.device_augment import encode_jitter, encode_recipe, mirrored_box
from misc.device_input import PairLabels
from misc.indexing import pair_indices
from misc.pil_color import jitter_parameters
from voc12.dataloader import IMG_DIR, GetAffinityLabelFromIndices, _EpochSeeded, color_jitter, color_jitter_image

COLOR_JITTER = (0.3, 0.3, 0.3, 0.1)     # brightness, contrast, saturation, hue


def block_mean(maps: np.ndarray, block: int = 8) -> np.ndarray:
    """(C, H, W) -> (C, H / block, W / block) means over aligned block x block squares (H, W multiples of it)."""
    channels, height, width = maps.shape
    return maps.reshape(channels, height // block, block, width // block, block).mean(axis=(2, 4))


def confident_label(la: np.ndarray, ha: np.ndarray) -> np.ndarray:
    """The reference's rule on block-averaged marginals la, ha (K + 1, h, w) (channel 0 background) -> (h, w)
    uint8: the low-alpha argmax where it is foreground (1..K, the position among the image's classes), 255
    where it is background, then 0 wherever the high-alpha argmax is background (even over la's foreground),
    and 255 where no channel scores (blocks of crop padding)."""
    no_score = np.maximum(la.max(axis=0), ha.max(axis=0)) < 1e-5
    la_idx, ha_idx = np.argmax(la, axis=0), np.argmax(ha, axis=0)
    label = la_idx.astype(np.uint8)
    label[la_idx == 0] = 255
    label[ha_idx == 0] = 0
    label[no_score] = 255
    return label


def load_crf_maps(path: Path, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(la, ha), each (K + 1, H, W) `dtype` (None: as stored, float16), from a `make_crf_labels` file."""
    with np.load(path) as data:
        if dtype is None:
            return data['la'], data['ha']
        return data['la'].astype(dtype), data['ha'].astype(dtype)


class CrfAffinityDataset(_EpochSeeded):
    """{'name', 'img' (3, crop, crop), 'aff_bg_pos_label', 'aff_fg_pos_label', 'aff_neg_label' (P, S)};
    compact: {'name', 'img' (crop, crop, 3) uint8, 'pair_label_map' (crop/8, crop/8) uint8}, whose pair
    labels `self.pair_labels` gives on the device."""

    def __init__(self, ids: Sequence[str], root: Path, crf_dir: Path, crop_size: int = 448, radius: int = 5,
                 seed: int = 0, num_labels: int = 21):
        super().__init__(seed)
        if crop_size % 8:
            raise ValueError(f'crop size {crop_size} is not a multiple of 8')
        self.ids, self.root, self.crf_dir, self.crop_size = list(ids), Path(root), Path(crf_dir), crop_size
        self.extract_affinity_labels = GetAffinityLabelFromIndices(*pair_indices(radius, crop_size // 8),
                                                                   num_labels)
        self.pair_labels = PairLabels(*pair_indices(radius, crop_size // 8), num_labels)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        rng = self.rng(index)
        image_id = self.ids[index]
        if self.compact and self.deferred:
            image = imutils.read_rgb_fast(self.root / IMG_DIR / f'{image_id}.jpg')      # (H, W, 3) uint8
            order, factors = jitter_parameters(rng, COLOR_JITTER)       # color_jitter_image's draws
        elif self.compact:
            image = color_jitter_image(imutils.read_rgb_image(self.root / IMG_DIR / f'{image_id}.jpg'), rng,
                                       COLOR_JITTER)
        else:
            image = color_jitter(imutils.read_rgb(self.root / IMG_DIR / f'{image_id}.jpg'), rng, COLOR_JITTER)
        la, ha = load_crf_maps(self.crf_dir / f'{image_id}.npz', None if self.compact else np.float32)
        size = image.size[::-1] if self.compact and not self.deferred else image.shape[:2]
        if la.shape[1:] != size:
            raise imutils.BadInputError(f'{self.crf_dir / image_id}.npz: CRF maps are {la.shape[1:]} but the image '
                                        f'is {tuple(size)}; rerun the la/ha step with --overwrite')
        if self.compact:
            box = imutils.random_crop_box(size, self.crop_size, rng)       # the old path's draws: box, then flip
            flip = bool(rng.random() > 0.5)                                # imutils.random_lr_flip
            if self.deferred and self.crop_size >= 16:                     # the labels are made on the device
                out = {'name': image_id, 'la_src': torch.from_numpy(la), 'ha_src': torch.from_numpy(ha),
                       'label_recipe': torch.tensor([*box[:8], int(flip), self.crop_size], dtype=torch.int64)}
            else:
                out = {'name': image_id, 'pair_label_map': torch.from_numpy(self._crop_label(la, ha, box, flip))}
            if self.deferred:          # jitter, crop, flip the crop == flip, jitter, crop with the box mirrored
                height, width = size
                out.update(img_src=torch.from_numpy(image),
                           img_recipe=encode_recipe((width, height), flip, mirrored_box(box, width, self.crop_size)
                                                    if flip else box, self.crop_size),
                           img_jitter=encode_jitter(order, factors))
            else:
                out['img'] = torch.from_numpy(self._crop_image(image, box, flip))
            return out
        maps = np.concatenate([la, ha]).transpose(1, 2, 0)                      # (H, W, 2(K + 1))
        img, maps = imutils.random_crop([image, maps], self.crop_size, (0, 0.0), rng)
        img, maps = imutils.random_lr_flip([imutils.normalize(img), maps], rng)
        pooled = block_mean(np.ascontiguousarray(maps.transpose(2, 0, 1)))      # (2(K + 1), crop/8, crop/8)
        label = confident_label(pooled[:len(la)], pooled[len(la):])
        bg_pos, fg_pos, neg = self.extract_affinity_labels(label)
        return {'name': image_id, 'img': torch.from_numpy(imutils.hwc_to_chw(img)),
                'aff_bg_pos_label': bg_pos, 'aff_fg_pos_label': fg_pos, 'aff_neg_label': neg}

    def _crop_label(self, la: np.ndarray, ha: np.ndarray, box: Sequence[int], flip: bool) -> np.ndarray:
        """The (crop/8, crop/8) label map of the stored marginals under the crop box and flip."""
        crop = self.crop_size
        top, bottom, left, right = box[:4]
        if flip:                       # the flipped canvas: the crop lands mirrored, its columns reversed
            left, right = crop - right, crop - left
        maps = np.zeros((len(la) + len(ha), crop, crop), np.float32)      # (2(K + 1), crop, crop)
        for offset, stored in ((0, la), (len(la), ha)):
            region = stored[:, box[4]:box[5], box[6]:box[7]]
            maps[offset:offset + len(stored), top:bottom, left:right] = region[:, :, ::-1] if flip else region
        pooled = block_mean(maps)
        return confident_label(pooled[:len(la)], pooled[len(la):])

    def _crop_image(self, image, box: Sequence[int], flip: bool) -> np.ndarray:
        """The jittered PIL image's (crop, crop, 3) uint8 crop (raw 0 padding, as apply_crop), flipped."""
        from PIL import Image
        image = imutils.pil_crop(image, box, self.crop_size)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.array(image)
