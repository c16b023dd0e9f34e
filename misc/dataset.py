"""What the pipeline needs to know about a dataset's labels, passed in rather than imported.

misc/ stays free of any one dataset: functions that need the class names, their count, the palette of
the label PNGs or the ignore value take a `DatasetInfo`. `voc12.classes.VOC12` is PASCAL VOC 2012's;
another dataset (COCO's 80 classes) adds its own instance next to its loader.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class DatasetInfo:
    """Label maps use 0 for background, 1..num_classes for `class_names` (in order), `ignore` for void."""
    name: str                                  # short name (the COCO export's supercategory)
    class_names: tuple[str, ...]               # foreground categories; class index c is label c + 1
    palette: Optional[tuple[int, ...]] = None  # flat [r, g, b, ...] of the label PNGs (None: grayscale)
    ignore: int = 255
    category_ids: Optional[tuple[int, ...]] = None   # the dataset's own id of each class (COCO's 1..90 with
                                                     # gaps) for the COCO export; None: class index + 1

    def category_id(self, class_index: int) -> int:
        """The export's category id of class index 0..num_classes-1."""
        return self.category_ids[class_index] if self.category_ids is not None else class_index + 1

    @property
    def num_classes(self) -> int:
        """Foreground categories (the classifier's outputs)."""
        return len(self.class_names)

    @property
    def label_names(self) -> tuple[str, ...]:
        """Names of the label-map values 0..num_classes: background first."""
        return ('background',) + self.class_names

    @property
    def num_labels(self) -> int:
        return self.num_classes + 1

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """(H, W) label map -> (H, W, 3) uint8 RGB in the palette's colours."""
        if self.palette is None:
            grey = np.asarray(label, dtype=np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        table = np.zeros((256, 3), np.uint8)
        colours = np.asarray(self.palette, dtype=np.uint8).reshape(-1, 3)[:256]
        table[:len(colours)] = colours
        return table[np.asarray(label, dtype=np.uint8)]
