"""mIoU of the CAMs against the ground truth of the eval set: background score `cam_eval_thres`, argmax.

With `--sweep`, every listed threshold is evaluated in the same pass (one confusion matrix each).

On the synthetic dataset (scene labels in scenes.json / usual_scenes.json) two more figures measure
how much a CAM leans on context (`metrics.cam_leakage`: the share of a class's CAM mass on ground-truth
background, out of its mass on all non-ignore pixels, averaged over (image, class) pairs):
  leakage_usual, leakage_foreign   on the eval set, pairs where the image's scene is / is not the
                                   class's usual scene (pair counts in leakage_pairs_usual / _foreign)
  shift                            on the context-shift split (every object in a foreign scene):
                                   {'miou', 'iou', 'threshold', 'leakage', 'images'}
Without scene labels (VOC) these keys are absent and nothing is logged about them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from misc import metrics, torchutils
from misc.config import Config
from misc.progress import progress
from step import common
from voc12 import dataloader

logger = logging.getLogger(__name__)


def settings(cfg: Config) -> tuple[str, ...]:
    return ('cam_eval_thres', 'sweep', 'chainer_eval_set')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('make_cam',)


def outputs(cfg: Config) -> list[Path]:
    return [cfg.metrics_dir / 'eval_cam.json']


def evaluate(cfg: Config, ids: list[str], scores_of: Callable[[str], tuple[np.ndarray, np.ndarray]],
             configured: float, name: str, leakage: Optional[metrics.ContextLeakage] = None,
             sweep: Optional[Sequence[float]] = None) -> dict:
    """Confusion matrices for the configured threshold and the sweep (`cfg.sweep` unless given), in one
    pass over the images; `leakage`, when given, is updated with every image's scores as well."""
    sweep = tuple(cfg.sweep if sweep is None else sweep)
    thresholds = [configured] + [t for t in sweep if abs(t - configured) > 1e-9]
    data = common.dataset(cfg)
    matrices = [metrics.ConfusionMatrix(data.num_labels, data.ignore) for _ in thresholds]
    for image_id in progress(torchutils.shard(ids), desc=name, disable=not torchutils.is_main_process()):
        scores, keys = scores_of(image_id)
        gt = dataloader.load_gt_mask(cfg.dataset_root, image_id, scores.shape[1:])
        for threshold, matrix in zip(thresholds, matrices):
            matrix.update(gt, metrics.label_from_scores(scores, keys, threshold))
        if leakage is not None:
            leakage.update(image_id, scores, keys, gt)
    for matrix in matrices:
        matrix.all_reduce()
    if leakage is not None:
        leakage.all_reduce()
    results = [m.compute() for m in matrices]
    out = dict(results[0], threshold=configured, images=len(ids))
    if sweep:
        order = np.argsort(thresholds)
        table = [{'threshold': thresholds[i], 'miou': results[i]['miou']} for i in order]
        best = max(table, key=lambda row: row['miou'] if np.isfinite(row['miou']) else -1)
        out['sweep'], out['best'] = table, best
    if torchutils.is_main_process():
        logger.info('%s (threshold %.2f):\n%s', name, configured, metrics.format_table(results[0], data.label_names))
        if sweep:
            logger.info('%s sweep:\n%s', name, metrics.format_sweep([r['threshold'] for r in out['sweep']],
                                                                    [r['miou'] for r in out['sweep']], configured))
    return out


def _pct(value: Optional[float]) -> str:
    return '-' if value is None else f'{100 * value:.1f}%'


def run(cfg: Config) -> dict:
    ids = common.eval_ids(cfg)
    shift = dataloader.shift_ids(cfg.dataset_root)
    scene_labels = dataloader.load_scenes(cfg.dataset_root, common.dataset(cfg).class_names)
    output_of = lambda i: cfg.cam_dir / f'{i}.npz'   # noqa: E731
    common.require_outputs(ids, output_of, 'CAMs of the eval set', 'make_cam')

    def scores_of(image_id: str):
        with np.load(output_of(image_id)) as cam:
            return cam['high_res'], cam['keys']

    def leakage_meter() -> Optional[metrics.ContextLeakage]:
        return metrics.ContextLeakage(*scene_labels) if scene_labels is not None else None

    context = leakage_meter()
    result = evaluate(cfg, ids, scores_of, cfg.cam_eval_thres, 'eval_cam', leakage=context)
    if context is not None:
        found = context.compute()
        result.update(leakage_usual=found['usual'], leakage_foreign=found['foreign'],
                      leakage_pairs_usual=found['pairs_usual'], leakage_pairs_foreign=found['pairs_foreign'])
        logger.info('eval_cam: CAM mass on background (leakage), usual scene %s over %d pairs, foreign scene %s '
                    'over %d pairs', _pct(found['usual']), found['pairs_usual'], _pct(found['foreign']),
                    found['pairs_foreign'])
    if shift and scene_labels is not None:
        common.require_outputs(shift, output_of, 'CAMs of the context-shift split', 'make_cam')
        if set(shift) == set(ids):      # --eval_set shift: the figures above are the shift split's
            on_shift, shift_leakage = result, found['all']
        else:
            meter = leakage_meter()
            on_shift = evaluate(cfg, shift, scores_of, cfg.cam_eval_thres, 'eval_cam (shift split)',
                                leakage=meter, sweep=())
            shift_leakage = meter.compute()['all']
        result['shift'] = {'miou': on_shift['miou'], 'iou': on_shift['iou'], 'threshold': cfg.cam_eval_thres,
                           'leakage': shift_leakage, 'images': len(shift)}
        logger.info('eval_cam: context-shift split, %d images: mIoU %.1f, leakage %s', len(shift),
                    100 * on_shift['miou'], _pct(shift_leakage))
    if torchutils.is_main_process():
        metrics.write_json(cfg.metrics_dir / 'eval_cam.json', result)
    return result
