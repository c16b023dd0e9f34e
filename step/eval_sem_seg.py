"""mIoU of the pseudo masks on the eval set, with the background and mean foreground FP/FN shares.

Masks are read as written by make_sem_seg (255 counted as background, as the reference does). With
`--sweep`, the scores each method's masks were made from (`walked_scores` of the make_sem_seg step,
asked of the pipeline) are thresholded at every listed background score; the figures above the sweep
are always the masks'.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from misc import imutils, metrics, torchutils
from misc.config import Config
from step import common, pipeline
from step.eval_cam import evaluate

logger = logging.getLogger(__name__)


def settings(cfg: Config) -> tuple[str, ...]:
    return ('sem_seg_bg_thres', 'sweep', 'chainer_eval_set')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('make_sem_seg',)


def outputs(cfg: Config) -> list[Path]:
    return [cfg.metrics_dir / 'eval_sem_seg.json']


def mask_scores(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-hot scores of a stored mask (255 -> background): any threshold in (0, 1) gives the mask back.
    Only the classes present get a channel, so this costs what reading the mask costs."""
    mask = np.where(mask == 255, 0, mask)
    classes = np.unique(mask)
    classes = classes[classes > 0]
    return (mask[None] == classes[:, None, None]).astype(np.float32), classes.astype(np.int64) - 1


def run(cfg: Config) -> dict:
    ids = common.eval_ids(cfg)
    mask_of = lambda i: cfg.sem_seg_dir / f'{i}.png'   # noqa: E731
    common.require_outputs(ids, mask_of, 'pseudo masks of the eval set', 'make_sem_seg')
    result = evaluate(cfg, ids, lambda i: mask_scores(imutils.read_label_png(mask_of(i))), cfg.sem_seg_bg_thres,
                      'eval_sem_seg', sweep=())
    if cfg.sweep:
        sem_seg = pipeline.need(cfg, 'make_sem_seg')
        size_of = lambda i: imutils.read_label_png(mask_of(i)).shape   # noqa: E731
        if ids and sem_seg.walked_scores(cfg, ids[0], size_of(ids[0])) is not None:
            def scores_of(image_id: str):
                scores = sem_seg.walked_scores(cfg, image_id, size_of(image_id))
                if scores is None:
                    raise common.BadInputError(f'walked scores of {image_id} missing; rerun make_sem_seg '
                                               'with --overwrite')
                return scores
            swept = evaluate(cfg, ids, scores_of, sem_seg.mask_threshold(cfg), 'eval_sem_seg (walked scores)')
            result.update(sweep=swept['sweep'], best=swept['best'])
        else:
            logger.info('eval_sem_seg: the masks\' walked scores were not kept; no sweep')
    fp, fn = result['fp'], result['fn']
    result.update(bg_fp=fp[0], bg_fn=fn[0], fg_fp=float(np.nanmean(fp[1:])), fg_fn=float(np.nanmean(fn[1:])))
    logger.info('pseudo masks: background FP %.3f FN %.3f; foreground mean FP %.3f FN %.3f',
                result['bg_fp'], result['bg_fn'], result['fg_fp'], result['fg_fn'])
    if torchutils.is_main_process():
        metrics.write_json(cfg.metrics_dir / 'eval_sem_seg.json', result)
    return result
