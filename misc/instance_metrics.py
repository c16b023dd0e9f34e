"""Instance segmentation average precision, PASCAL VOC style (the definition of chainercv's
`eval_instance_segmentation_voc`, as IRNet reports it).

Per image and class, predictions are taken by decreasing score; each is matched to the ground-truth
instance of its class it overlaps most (mask IoU). It is a true positive when that IoU reaches the
threshold and that instance was not matched before; otherwise (too little overlap, or a duplicate
of a matched instance) a false positive. Over the dataset, a class's detections sorted by score give
its precision/recall curve, and AP is the area under the curve with precision made monotone
(VOC 2010+, not the 11-point 2007 metric). A class without ground truth instances has AP NaN;
mAP is the mean over the other classes.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import numpy as np


def mask_iou(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
    """(A, H, W), (B, H, W) bool -> (A, B) intersection over union."""
    # float32 counts are exact below 2^24 pixels; the ratio is taken in float64, as from integers
    a = masks_a.reshape(len(masks_a), -1).astype(np.float32)
    b = masks_b.reshape(len(masks_b), -1).astype(np.float32)
    inter = (a @ b.T).astype(np.float64)
    union = a.sum(1, dtype=np.float64)[:, None] + b.sum(1, dtype=np.float64)[None, :] - inter
    with np.errstate(divide='ignore', invalid='ignore'):
        return inter / union


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision/recall curve, precision replaced by its maximum at any higher recall."""
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


class InstanceAP:
    """Accumulates matches image by image for several IoU thresholds; `compute()` gives AP per class.

    Ground-truth pixels of the void label (VOC's 255 borders) belong to no instance, as in chainercv's
    VOC loader; with `ignore_void`, they are also taken out of the predicted masks before the IoU
    (the VOC devkit's rule for semantic segmentation).
    """

    def __init__(self, num_classes: int, iou_thresholds: Sequence[float] = (0.5,), ignore_void: bool = False):
        self.iou_thresholds = tuple(iou_thresholds)
        self.num_classes = num_classes
        self.ignore_void = ignore_void
        self.n_positive = np.zeros(num_classes, np.int64)
        self.scores: dict[int, list[float]] = defaultdict(list)
        self.hits: dict[tuple[float, int], list[bool]] = defaultdict(list)

    def update(self, pred_masks: np.ndarray, pred_classes: np.ndarray, pred_scores: np.ndarray,
               gt_masks: np.ndarray, gt_classes: np.ndarray, void: Optional[np.ndarray] = None) -> None:
        """One image: predictions (R, H, W) bool, (R,) class indices, (R,) scores; ground truth (G, H, W)
        bool, (G,) class indices; void (H, W) bool or None."""
        pred_masks = np.asarray(pred_masks, bool)
        pred_classes, pred_scores = np.asarray(pred_classes).reshape(-1), np.asarray(pred_scores).reshape(-1)
        gt_masks, gt_classes = np.asarray(gt_masks, bool), np.asarray(gt_classes).reshape(-1)
        if self.ignore_void and void is not None and len(pred_masks):
            pred_masks = pred_masks & ~np.asarray(void, bool)[None]
        for cls in np.unique(np.concatenate([pred_classes, gt_classes]).astype(np.int64)):
            is_pred, is_gt = pred_classes == cls, gt_classes == cls
            order = pred_scores[is_pred].argsort()[::-1]           # highest score first
            scores, masks = pred_scores[is_pred][order], pred_masks[is_pred][order]
            gt = gt_masks[is_gt]
            self.n_positive[cls] += len(gt)
            self.scores[cls].extend(float(s) for s in scores)
            if len(masks) == 0:
                continue
            if len(gt) == 0:
                for thres in self.iou_thresholds:
                    self.hits[thres, cls].extend([False] * len(masks))
                continue
            iou = mask_iou(masks, gt)
            best, best_iou = iou.argmax(axis=1), iou.max(axis=1)
            for thres in self.iou_thresholds:
                taken = np.zeros(len(gt), bool)
                for target, overlap in zip(best, best_iou):
                    hit = bool(overlap >= thres and not taken[target])
                    if overlap >= thres:
                        taken[target] = True
                    self.hits[thres, cls].append(hit)

    def compute(self) -> dict[float, dict]:
        """{threshold: {'ap': (num_classes,) list (NaN: no ground truth), 'map': float}}."""
        out = {}
        for thres in self.iou_thresholds:
            ap = np.full(self.num_classes, np.nan)
            for cls in range(self.num_classes):
                if self.n_positive[cls] == 0:
                    continue
                scores = np.asarray(self.scores[cls], np.float64)
                hits = np.asarray(self.hits[thres, cls], bool)
                hits = hits[scores.argsort()[::-1]]
                tp, fp = np.cumsum(hits), np.cumsum(~hits)
                ap[cls] = average_precision(tp / np.maximum(tp + fp, 1), tp / self.n_positive[cls])
            present = ap[np.isfinite(ap)]
            out[thres] = {'ap': [float(v) for v in ap], 'map': float(present.mean()) if len(present) else float('nan')}
        return out


def evaluate_instances(pred_masks, pred_classes, pred_scores, gt_masks, gt_classes, iou_thresh: float = 0.5,
                       voids=None, ignore_void: bool = False, num_classes: Optional[int] = None) -> dict:
    """Whole-dataset form (lists over images, like chainercv's function): {'ap', 'map'} at `iou_thresh`;
    `num_classes` None: as many as the largest class index given needs."""
    if num_classes is None:
        num_classes = 1 + max([int(np.max(c)) for c in list(pred_classes) + list(gt_classes) if len(c)] or [0])
    ap = InstanceAP(num_classes, (iou_thresh,), ignore_void=ignore_void)
    voids = voids if voids is not None else [None] * len(gt_masks)
    for args in zip(pred_masks, pred_classes, pred_scores, gt_masks, gt_classes, voids):
        ap.update(*args)
    return ap.compute()[iou_thresh]
