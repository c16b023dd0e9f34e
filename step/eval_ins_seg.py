"""Instance mAP of the instance pseudo masks on the eval set, at mask IoU 0.25, 0.5 and 0.75.

Ground truth: VOC's `SegmentationObject/<id>.png` (instance ids; 0 background, 255 void) with the class
of each instance read from `SegmentationClass/<id>.png`; void pixels belong to no instance. The metric
is chainercv's `eval_instance_segmentation_voc` (see misc/instance_metrics.py); `map50_void_ignored`
also takes the void pixels out of the predictions. Skipped, with a log line, on a dataset without
SegmentationObject (e.g. SBD-only image lists).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from misc import imutils, metrics, torchutils
from misc.config import Config
from misc.imutils import BadInputError
from misc.instance_metrics import InstanceAP
from misc.progress import progress
from step import common
from step.make_ins_seg_labels import ins_seg_dir, read_instances
from voc12.classes import CAT_LIST, IGNORE

logger = logging.getLogger(__name__)

def settings(cfg: Config) -> tuple[str, ...]:
    return ('chainer_eval_set',)


def reads(cfg: Config) -> tuple[str, ...]:
    return ('make_ins_seg',)
IOU_THRESHOLDS = (0.25, 0.5, 0.75)
OBJECT_DIR = 'SegmentationObject'


def outputs(cfg: Config) -> list[Path]:
    return [cfg.metrics_dir / 'eval_ins_seg.json']


def load_gt_instances(root: Path, image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """VOC instance ground truth: masks (G, H, W) bool, class indices (G,) 0..19, void (H, W) bool."""
    objects = imutils.read_label_png(Path(root) / OBJECT_DIR / f'{image_id}.png')
    classes = imutils.read_label_png(Path(root) / 'SegmentationClass' / f'{image_id}.png')
    if objects.shape != classes.shape:
        raise BadInputError(f'{OBJECT_DIR}/{image_id}.png is {objects.shape}, SegmentationClass is '
                            f'{classes.shape}; the two must match')
    masks, labels = [], []
    for instance in np.unique(objects):
        if instance in (0, IGNORE):
            continue
        mask = objects == instance
        values = classes[mask]
        values = values[(values != 0) & (values != IGNORE)]
        if values.size == 0:
            continue                     # an instance id on background/void only: not an object
        masks.append(mask)
        labels.append(int(np.bincount(values).argmax()) - 1)
    masks_arr = np.stack(masks) if masks else np.zeros((0,) + objects.shape, bool)
    return masks_arr, np.asarray(labels, np.int64), objects == IGNORE


def format_table(result: dict, class_names: Sequence[str] = CAT_LIST) -> str:
    rows = [f'{"class":>12s} ' + ' '.join(f'{"AP@" + format(t, "g"):>7s}' for t in IOU_THRESHOLDS)]
    for c, name in enumerate(class_names):
        values = [result['by_iou'][str(t)]['ap'][c] for t in IOU_THRESHOLDS]
        rows.append(f'{name:>12s} ' + ' '.join('      -' if not np.isfinite(v) else f'{100 * v:7.2f}' for v in values))
    rows.append(f'{"mAP":>12s} ' + ' '.join(f'{100 * result["by_iou"][str(t)]["map"]:7.2f}' for t in IOU_THRESHOLDS))
    return '\n'.join(rows)


def run(cfg: Config) -> dict:
    ids = common.eval_ids(cfg)
    with_gt = [i for i in ids if (cfg.dataset_root / OBJECT_DIR / f'{i}.png').is_file()]
    if not with_gt:
        logger.info('eval_ins_seg: no %s/ ground truth for the eval set in %s, skipped', OBJECT_DIR, cfg.dataset_root)
        return {'skipped': 'no SegmentationObject'}
    if len(with_gt) < len(ids):
        logger.warning('eval_ins_seg: %d of %d eval images have no %s/ mask; evaluating the other %d',
                       len(ids) - len(with_gt), len(ids), OBJECT_DIR, len(with_gt))
    output_of = lambda i: ins_seg_dir(cfg) / f'{i}.npz'   # noqa: E731
    common.require_outputs(with_gt, output_of, 'instance pseudo masks of the eval set', 'make_ins_seg')
    if not torchutils.is_main_process():
        torchutils.barrier()
        return {}
    n_classes = common.dataset(cfg).num_classes
    chainercv_rule = InstanceAP(n_classes, IOU_THRESHOLDS)
    void_ignored = InstanceAP(n_classes, (0.5,), ignore_void=True)
    n_gt = n_pred = 0
    for image_id in progress(with_gt, desc='eval_ins_seg'):
        pred = read_instances(output_of(image_id))
        gt_masks, gt_classes, void = load_gt_instances(cfg.dataset_root, image_id)
        if pred['masks'].shape[1:] != void.shape:
            raise BadInputError(f'{output_of(image_id)}: masks are {pred["masks"].shape[1:]}, the ground truth '
                                f'{void.shape}; rerun make_ins_seg with --overwrite')
        for accumulator in (chainercv_rule, void_ignored):
            accumulator.update(pred['masks'], pred['classes'], pred['scores'], gt_masks, gt_classes, void)
        n_gt, n_pred = n_gt + len(gt_classes), n_pred + len(pred['classes'])
    by_iou = {str(t): v for t, v in chainercv_rule.compute().items()}
    result = {'map': by_iou['0.5']['map'], 'ap': by_iou['0.5']['ap'], 'map25': by_iou['0.25']['map'],
              'map75': by_iou['0.75']['map'], 'map50_void_ignored': void_ignored.compute()[0.5]['map'],
              'by_iou': by_iou, 'images': len(with_gt), 'gt_instances': n_gt, 'pred_instances': n_pred}
    logger.info('eval_ins_seg (%d images, %d ground-truth and %d predicted instances):\n%s', len(with_gt), n_gt,
                n_pred, format_table(result, common.dataset(cfg).class_names))
    metrics.write_json(cfg.metrics_dir / 'eval_ins_seg.json', result)
    torchutils.barrier()
    return result
