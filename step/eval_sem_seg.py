"""mIoU of the pseudo masks on the eval set, with the background and mean foreground FP/FN shares.

Masks are read as written by make_sem_seg_labels (255 counted as background, as the reference does).
With `--sweep`, the stored random-walk scores are re-thresholded for every listed background score.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from misc import imutils, metrics, torchutils
from misc.config import Config
from step import common
from step.eval_cam import evaluate
from step.make_sem_seg_labels import upsample_scores

logger = logging.getLogger(__name__)


SETTINGS = ('sem_seg_bg_thres', 'sweep', 'chainer_eval_set')


def outputs(cfg: Config) -> list[Path]:
    return [cfg.metrics_dir / 'eval_sem_seg.json']


def run(cfg: Config) -> dict:
    ids = common.eval_ids(cfg)
    mask_of = lambda i: cfg.sem_seg_dir / f'{i}.png'   # noqa: E731
    rw_of = lambda i: cfg.out_dir / 'rw' / f'{i}.npz'   # noqa: E731
    common.require_outputs(ids, mask_of, 'pseudo masks of the eval set', 'make_sem_seg')
    use_scores = bool(cfg.sweep) and all(rw_of(i).is_file() for i in ids)

    def scores_of(image_id: str):
        mask = imutils.read_label_png(mask_of(image_id))
        if use_scores:
            with np.load(rw_of(image_id)) as rw:
                scores = upsample_scores(torch.from_numpy(rw['rw'])[:, None], mask.shape).numpy()
                return scores, rw['keys']
        # One-hot scores of the stored mask: any threshold in (0, 1) gives the mask back.
        # Only the classes present get a channel, so this costs what reading the mask costs.
        mask = np.where(mask == 255, 0, mask)
        classes = np.unique(mask)
        classes = classes[classes > 0]
        return (mask[None] == classes[:, None, None]).astype(np.float32), classes.astype(np.int64) - 1

    result = evaluate(cfg, ids, scores_of, cfg.sem_seg_bg_thres, 'eval_sem_seg')
    fp, fn = result['fp'], result['fn']
    result.update(bg_fp=fp[0], bg_fn=fn[0], fg_fp=float(np.nanmean(fp[1:])), fg_fn=float(np.nanmean(fn[1:])))
    logger.info('pseudo masks: background FP %.3f FN %.3f; foreground mean FP %.3f FN %.3f',
                result['bg_fp'], result['bg_fn'], result['fg_fp'], result['fg_fn'])
    if torchutils.is_main_process():
        metrics.write_json(cfg.metrics_dir / 'eval_sem_seg.json', result)
    return result
