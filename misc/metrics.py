"""Semantic segmentation confusion matrices and the figures derived from them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from misc import imutils
from misc.torchutils import all_reduce_sum

IGNORE = 255        # the usual void label (VOC's borders); a dataset description gives its own


class ConfusionMatrix:
    """Rows: ground truth, columns: prediction; `ignore` in the ground truth is skipped. `num_classes`
    counts the label values, background included (`DatasetInfo.num_labels`)."""

    def __init__(self, num_classes: int, ignore: int = IGNORE):
        self.num_classes = num_classes
        self.ignore = ignore
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        gt = np.asarray(gt).reshape(-1).astype(np.int64)
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        keep = gt != self.ignore
        gt, pred = gt[keep], pred[keep]
        if gt.size and (gt.max() >= self.num_classes or pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError('labels outside [0, num_classes) in a confusion matrix update')
        self.mat += np.bincount(gt * self.num_classes + pred, minlength=self.num_classes ** 2
                                ).reshape(self.num_classes, self.num_classes)

    def all_reduce(self) -> None:
        self.mat = all_reduce_sum(torch.from_numpy(self.mat)).numpy()

    def compute(self) -> dict:
        """Per-class IoU (NaN for a class absent from both), mIoU over the present classes, and the
        reference's false-positive / false-negative shares of each class's union."""
        mat = self.mat.astype(np.float64)
        gt, pred, hit = mat.sum(1), mat.sum(0), np.diag(mat)
        union = gt + pred - hit
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = hit / union
            fp = 1.0 - gt / union
            fn = 1.0 - pred / union
        return {'miou': float(np.nanmean(iou)) if np.isfinite(iou).any() else float('nan'),
                'iou': [float(v) for v in iou],
                'fp': [float(v) for v in fp], 'fn': [float(v) for v in fn]}


def label_from_scores(scores: np.ndarray, keys: np.ndarray, bg_thres: float) -> np.ndarray:
    """argmax over [bg_thres, scores...] mapped to class ids: keys (K,) are 0-based class indices."""
    padded = np.concatenate([np.full((1,) + scores.shape[1:], bg_thres, scores.dtype), scores], axis=0)
    lookup = np.concatenate([[0], np.asarray(keys) + 1])
    return lookup[np.argmax(padded, axis=0)].astype(np.uint8)


def cam_leakage(cams: np.ndarray, gt: np.ndarray, ignore: int = IGNORE) -> np.ndarray:
    """Share of each CAM's mass that falls on ground-truth background.

    cams (K, H, W): one map per class, e.g. `high_res` of `cam/<id>.npz` (already divided by its max);
    negative values (SEAM's normalisation leaves a few near 0) count as no mass. gt (H, W): VOC labels,
    0 background, `ignore` (the border band) left out of both the numerator and the denominator.
    Returns (K,) float64 in [0, 1]: mass on background / mass on all non-ignore pixels; NaN for a map
    with no mass there (nothing to localise)."""
    cams = np.clip(np.asarray(cams, np.float64), 0, None)
    gt = np.asarray(gt)
    if cams.shape[1:] != gt.shape:
        raise ValueError(f'CAMs {cams.shape[1:]} and ground truth {gt.shape} differ in size')
    valid, background = gt != ignore, gt == 0
    total = cams[:, valid].sum(axis=1)                   # (K,)
    on_background = cams[:, background].sum(axis=1)       # (K,)
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(total > 0, on_background / total, np.nan)


class ContextLeakage:
    """Mean CAM leakage (`cam_leakage`) over (image, class) pairs, split by context: `usual` where the
    image's scene is the class's usual scene, `foreign` where it is not.

    `scenes` maps image id -> scene, `usual_scenes[c]` is class c's (0..19) usual scene (the synthetic
    dataset's scenes.json and usual_scenes.json). Sums and counts all-reduce over ranks, like a
    ConfusionMatrix; pairs whose map has no mass are left out."""

    GROUPS = ('usual', 'foreign')

    def __init__(self, scenes: dict[str, str], usual_scenes: Sequence[str]):
        self.scenes = scenes
        self.usual_scenes = list(usual_scenes)
        self.sums = np.zeros((len(self.GROUPS), 2), np.float64)   # per group: sum of leakage, pairs

    def update(self, image_id: str, cams: np.ndarray, keys: Sequence[int], gt: np.ndarray) -> None:
        """cams (K, H, W) of the classes `keys` (0..19) of image `image_id`, gt (H, W) its labels."""
        scene = self.scenes[image_id]
        for cls, value in zip(keys, cam_leakage(cams, gt)):
            if np.isfinite(value):
                group = 0 if self.usual_scenes[int(cls)] == scene else 1
                self.sums[group] += (value, 1)

    def all_reduce(self) -> None:
        self.sums = all_reduce_sum(torch.from_numpy(self.sums)).numpy()

    def compute(self) -> dict:
        """{'usual', 'foreign', 'all'}: mean leakage (None without pairs), and the pair counts."""
        def mean(total: float, count: float) -> Optional[float]:
            return float(total / count) if count else None
        out = {name: mean(*self.sums[g]) for g, name in enumerate(self.GROUPS)}
        out['all'] = mean(*self.sums.sum(axis=0))
        out.update({f'pairs_{name}': int(self.sums[g, 1]) for g, name in enumerate(self.GROUPS)})
        return out


def format_table(result: dict, label_names: Sequence[str]) -> str:
    """Per-class IoU rows named by `label_names` (background first), then the mIoU."""
    rows = [f'{name:>12s} {100 * iou:6.2f}' for name, iou in zip(label_names, result['iou'])]
    return '\n'.join(rows + [f'{"mIoU":>12s} {100 * result["miou"]:6.2f}'])


def format_sweep(thresholds: Sequence[float], mious: Sequence[float], configured: float) -> str:
    lines = ['threshold   mIoU']
    best = int(np.nanargmax(mious))
    for i, (t, m) in enumerate(zip(thresholds, mious)):
        mark = ' <- best' if i == best else ''
        mark += ' (configured)' if abs(t - configured) < 1e-9 else ''
        lines.append(f'{t:9.3f}  {100 * m:6.2f}{mark}')
    return '\n'.join(lines)


def write_json(path: Path, payload: dict) -> None:
    with imutils.atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=2))


def paired_difference(treated: Sequence[Optional[float]], control: Sequence[Optional[float]],
                      confidence: float = 0.95) -> Optional[dict]:
    """Mean, sample standard deviation and Student-t interval of `treated[i] - control[i]` over the pairs
    where both are known (seeds of an experiment: each pair shares its data and its baseline network).
    None with no pair; with one pair the spread and the interval are NaN."""
    from scipy import stats
    diffs = np.array([t - c for t, c in zip(treated, control)
                      if t is not None and c is not None and np.isfinite(t) and np.isfinite(c)], dtype=np.float64)
    if diffs.size == 0:
        return None
    mean = float(diffs.mean())
    if diffs.size == 1:
        return {'n': 1, 'mean': mean, 'sd': float('nan'), 'low': float('nan'), 'high': float('nan')}
    sd = float(diffs.std(ddof=1))
    half_width = float(stats.t.ppf(0.5 + confidence / 2, diffs.size - 1)) * sd / np.sqrt(diffs.size)
    return {'n': int(diffs.size), 'mean': mean, 'sd': sd, 'low': mean - half_width, 'high': mean + half_width}
