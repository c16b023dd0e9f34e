"""mIoU of the segmentation network on the val list (held out of every training), without and with the CRF.

Reads make_seg's `seg/<id>.png` and `seg_crf/<id>.png` and the ground truth (255 ignored); the images are split
over ranks and the confusion matrices all-reduced. Writes `metrics/eval_seg.json`: `miou`, `iou` (per class,
NaN for a class absent from both), `miou_crf`, `iou_crf` (None without --seg_crf), `images`, `classes`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from misc import imutils, metrics, torchutils
from misc.config import Config
from misc.dataset import DatasetInfo
from step import common
from step.make_seg import seg_crf_dir, seg_dir
from voc12 import dataloader

logger = logging.getLogger(__name__)

def settings(cfg: Config) -> tuple[str, ...]:
    return ('val_list', 'seg_crf')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('make_seg',)


def outputs(cfg: Config) -> list[Path]:
    return [cfg.metrics_dir / 'eval_seg.json']


def score_folder(root: Path, ids: Sequence[str], folder: Path, data: DatasetInfo) -> metrics.ConfusionMatrix:
    """This rank's confusion matrix of the label PNGs in `folder` against the ground truth of `ids`."""
    matrix = metrics.ConfusionMatrix(data.num_labels, data.ignore)
    for image_id in ids:
        pred = imutils.read_label_png(folder / f'{image_id}.png')
        matrix.update(dataloader.load_gt_mask(root, image_id, pred.shape), pred)
    return matrix


def _json_iou(values: Sequence[float]) -> list[Optional[float]]:
    return [None if not np.isfinite(v) else float(v) for v in values]


def run(cfg: Config) -> dict:
    ids = common.val_ids(cfg)
    folders = {'': seg_dir(cfg)}
    if cfg.seg_crf:
        folders['_crf'] = seg_crf_dir(cfg)
    for folder in folders.values():
        common.require_outputs(ids, lambda i, f=folder: f / f'{i}.png', f'predictions of the val list in {folder.name}/',
                               'make_seg')
    mine = torchutils.shard(ids)
    data = common.dataset(cfg)
    result: dict = {'images': len(ids), 'classes': list(data.label_names), 'miou_crf': None, 'iou_crf': None}
    for suffix, folder in folders.items():
        matrix = score_folder(cfg.dataset_root, mine, folder, data)
        matrix.all_reduce()
        scores = matrix.compute()
        result[f'miou{suffix}'], result[f'iou{suffix}'] = scores['miou'], _json_iou(scores['iou'])
    label = 'eval_seg' + ('/' + cfg.stage if cfg.stage else '')
    logger.info('%s: val mIoU %.2f, with CRF %s (%d images)\n%s', label, 100 * result['miou'],
                '-' if result['miou_crf'] is None else f'{100 * result["miou_crf"]:.2f}', len(ids),
                metrics.format_table({'iou': [np.nan if v is None else v for v in result['iou']],
                                      'miou': result['miou']}, data.label_names))
    if torchutils.is_main_process():
        metrics.write_json(cfg.metrics_dir / 'eval_seg.json', result)
    return result
