"""PASCAL VOC 2012 class names and colour palette (the standard, publicly documented VOC devkit values)."""
from __future__ import annotations

import numpy as np

from misc.dataset import DatasetInfo

CAT_LIST = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
            'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
            'train', 'tvmonitor')
N_CAT = len(CAT_LIST)
CAT_NAME_TO_NUM = {name: i for i, name in enumerate(CAT_LIST)}
# Label-map classes: 0 background, 1..20 the categories above, 255 ignored.
CLASS_NAMES = ('background',) + CAT_LIST
IGNORE = 255


def voc_palette() -> list[int]:
    """The 256-entry VOC colour map as a flat [r, g, b, r, g, b, ...] list (bit-interleaving rule)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) label map -> (H, W, 3) uint8 RGB in VOC colours."""
    return VOC12.colorize(label)


# The description the pipeline passes to misc/ (metrics, palettes, COCO export) and to the networks.
VOC12 = DatasetInfo(name='voc', class_names=CAT_LIST, palette=tuple(voc_palette()), ignore=IGNORE)
