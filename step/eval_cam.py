"""mIoU of the CAMs against the ground truth of the eval set: background score `cam_eval_thres`, argmax.

With `--sweep`, every listed threshold is evaluated in the same pass (one confusion matrix each).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from misc import metrics, torchutils
from misc.config import Config
from step import common
from voc12 import dataloader

logger = logging.getLogger(__name__)


SETTINGS = ('cam_eval_thres', 'sweep', 'chainer_eval_set')


def outputs(cfg: Config) -> list[Path]:
    return [cfg.metrics_dir / 'eval_cam.json']


def evaluate(cfg: Config, ids: list[str], scores_of: Callable[[str], tuple[np.ndarray, np.ndarray]],
             configured: float, name: str) -> dict:
    """Confusion matrices for the configured threshold and the sweep (one pass over the images)."""
    thresholds = [configured] + [t for t in cfg.sweep if abs(t - configured) > 1e-9]
    matrices = [metrics.ConfusionMatrix() for _ in thresholds]
    for image_id in tqdm(torchutils.shard(ids), desc=name, disable=not torchutils.is_main_process()):
        scores, keys = scores_of(image_id)
        gt = dataloader.load_gt_mask(cfg.dataset_root, image_id, scores.shape[1:])
        for threshold, matrix in zip(thresholds, matrices):
            matrix.update(gt, metrics.label_from_scores(scores, keys, threshold))
    for matrix in matrices:
        matrix.all_reduce()
    results = [m.compute() for m in matrices]
    out = dict(results[0], threshold=configured, images=len(ids))
    if cfg.sweep:
        order = np.argsort(thresholds)
        sweep = [{'threshold': thresholds[i], 'miou': results[i]['miou']} for i in order]
        best = max(sweep, key=lambda row: row['miou'] if np.isfinite(row['miou']) else -1)
        out['sweep'], out['best'] = sweep, best
    if torchutils.is_main_process():
        logger.info('%s (threshold %.2f):\n%s', name, configured, metrics.format_table(results[0]))
        if cfg.sweep:
            logger.info('%s sweep:\n%s', name, metrics.format_sweep([r['threshold'] for r in out['sweep']],
                                                                    [r['miou'] for r in out['sweep']], configured))
    return out


def run(cfg: Config) -> dict:
    ids = common.eval_ids(cfg)
    output_of = lambda i: cfg.cam_dir / f'{i}.npz'   # noqa: E731
    common.require_outputs(ids, output_of, 'CAMs of the eval set', 'make_cam')

    def scores_of(image_id: str):
        with np.load(output_of(image_id)) as cam:
            return cam['high_res'], cam['keys']
    result = evaluate(cfg, ids, scores_of, cfg.cam_eval_thres, 'eval_cam')
    if torchutils.is_main_process():
        metrics.write_json(cfg.metrics_dir / 'eval_cam.json', result)
    return result
