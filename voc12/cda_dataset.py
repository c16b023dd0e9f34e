"""CDA's training pairs: each image, and the same image with a foreign object pasted in.

For each image the pasted class is drawn uniformly among the classes absent from the image that have
at least one object in the bank, and the object uniformly within that class; the pasted image's label
is the image's labels plus that class. The paste is done on the full image; the usual random
resize / flip / crop are then drawn independently for the original and the pasted image. With
`min_visible` > 0, a pasted class whose pixels mostly fall outside the crop (less than that share
survives) is dropped from the label; 0 keeps the reference's behaviour (always labelled).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from misc.cda import VARIANTS, ObjectBank, paste_object
from voc12.classes import CAT_LIST
from voc12.dataloader import ClassificationDataset, augment_for_cam, augment_for_cam_uint8, deferred_cam_sample

logger = logging.getLogger(__name__)
_warned_no_class = False


def choose_paste_class(label: np.ndarray, available: Sequence[int], rng: np.random.Generator,
                       allowed: Optional[Callable[[int], bool]] = None) -> int | None:
    """A class index absent from `label` (20,) and present in the bank, uniformly; None if there is none.
    `allowed` narrows the candidates (the usual/foreign-context control), falling back to all of them."""
    candidates = [c for c in available if label[c] == 0]
    if allowed is not None and any(allowed(c) for c in candidates):
        candidates = [c for c in candidates if allowed(c)]
    if not candidates:
        return None
    return int(candidates[int(rng.integers(len(candidates)))])


class CDAClassificationDataset(ClassificationDataset):
    """{'name', 'img', 'label', 'aug_img', 'aug_label', 'pasted_class' (-1 when none), 'pasted_visible' (the
    share of the pasted object's pixels inside the crop; 0 when none)}; compact: 'img' and 'aug_img' (crop,
    crop, 3) uint8 with 'img_valid' and 'aug_img_valid' (4,) (misc/device_input.py)."""

    def __init__(self, ids, root: Path, labels: dict[str, np.ndarray], bank: ObjectBank,
                 resize_long: Sequence[int] = (320, 640), crop_size: int = 512, seed: int = 0,
                 variant: str = 'rotate', min_visible: float = 0.0, paste_context: str = 'any',
                 jitter: Optional[Sequence[float]] = None, class_names: Sequence[str] = CAT_LIST):
        super().__init__(ids, root, labels, resize_long, crop_size, seed, jitter=jitter)
        self.bank = bank
        self.paste_options = VARIANTS[variant]
        self.min_visible = min_visible
        self.paste_context = paste_context
        self.scenes: dict[str, str] = {}
        self.usual: list[str] = []
        if paste_context != 'any':
            from voc12.dataloader import load_scenes
            self.scenes, self.usual = load_scenes(root, class_names)

    def _context_filter(self, image_id: str) -> Optional[Callable[[int], bool]]:
        if self.paste_context == 'any':
            return None
        scene = self.scenes[image_id]
        if self.paste_context == 'usual':
            return lambda c: self.usual[c] == scene
        return lambda c: self.usual[c] != scene

    def __getitem__(self, index: int) -> dict:
        global _warned_no_class
        rng = self.rng(index)
        image_id = self.ids[index]
        label = self.labels[image_id]
        original = self.load_for_device(index) if self.compact and self.deferred else self.load(index)
        pasted_class = choose_paste_class(label, self.bank.classes, rng, self._context_filter(image_id))
        aug_label = label.copy()
        if pasted_class is None:
            if not _warned_no_class:
                logger.warning('%s: no class absent from the image has objects in the bank; this pair (and '
                               'any like it) uses the unpasted image', image_id)
                _warned_no_class = True
            aug_source, pasted = original, np.zeros(original.shape[:2], bool)
        else:
            obj_img, obj_mask = self.bank.sample(pasted_class, rng)
            aug_source, pasted = paste_object(original, obj_img, obj_mask, rng, **self.paste_options)
            aug_label[pasted_class] = 1.0
        out = {'name': image_id, 'label': torch.from_numpy(label)}
        if self.compact and self.deferred:
            original_sample, _ = deferred_cam_sample(original, rng, self.resize_long, self.crop_size,
                                                     jitter=self.jitter)
            pasted_sample, visible = deferred_cam_sample(aug_source, rng, self.resize_long, self.crop_size,
                                                         mask=pasted, jitter=self.jitter, prefix='aug_img')
            out.update(original_sample, **pasted_sample)
        elif self.compact:
            img, valid, _ = augment_for_cam_uint8(original, rng, self.resize_long, self.crop_size, jitter=self.jitter)
            aug_img, aug_valid, visible = augment_for_cam_uint8(aug_source, rng, self.resize_long, self.crop_size,
                                                                mask=pasted, jitter=self.jitter)
            out.update(img_valid=torch.from_numpy(valid), aug_img_valid=torch.from_numpy(aug_valid))
        else:
            img, _ = augment_for_cam(original, rng, self.resize_long, self.crop_size, jitter=self.jitter)
            aug_img, visible = augment_for_cam(aug_source, rng, self.resize_long, self.crop_size, mask=pasted,
                                               jitter=self.jitter)
        if pasted_class is not None and visible < self.min_visible:
            aug_label[pasted_class] = 0.0
        if not (self.compact and self.deferred):
            out.update(img=torch.from_numpy(img), aug_img=torch.from_numpy(aug_img))
        out.update(aug_label=torch.from_numpy(aug_label), pasted_class=pasted_class if pasted_class is not None else -1,
                   pasted_visible=float(visible) if pasted_class is not None else 0.0)
        return out
