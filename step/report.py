"""End-of-run summary (baseline vs CDA) and a report with a contact sheet a person can look at.

Not a step of the registry: run_sample.py writes both after the steps, from the metrics they left."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from misc import imutils, metrics
from misc.config import Config, with_stage
from step import common
from voc12 import dataloader

SHEET_IMAGES = 6
SHEET_SHIFT_IMAGES = 3      # context-shift rows: where the baseline CAM puts most of its mass on background
TILE = 128


def _read_metric(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ir_label_quality(cfg: Config, ids: list[str]) -> Optional[dict]:
    """Precision (labelled pixels that agree with the ground truth) and coverage (share of ground-truth
    pixels that got a label) of the IR labels, over the ids that have both."""
    agree = labelled = total = 0
    for image_id in ids:
        path = cfg.relation_label_dir / f'{image_id}.png'
        gt_path = cfg.dataset_root / 'SegmentationClass' / f'{image_id}.png'
        if not path.is_file() or not gt_path.is_file():
            continue
        label, gt = imutils.read_label_png(path), imutils.read_label_png(gt_path)
        if label.shape != gt.shape:
            continue
        ignore = common.dataset(cfg).ignore
        valid = gt != ignore
        has_label = valid & (label != ignore)
        agree += int((label[has_label] == gt[has_label]).sum())
        labelled += int(has_label.sum())
        total += int(valid.sum())
    if total == 0:
        return None
    return {'precision': agree / max(labelled, 1), 'coverage': labelled / total}


def _pass_figures(cfg: Config, ids: list[str]) -> dict:
    """A pass's figures for summary.json. Always present (None when not measured, e.g. on VOC):
    cam_miou, sem_seg_miou, and the context figures cam_miou_shift, leakage_usual, leakage_foreign,
    leakage_shift (fractions in [0, 1]; benchmarks read them under 'baseline' and 'cda')."""
    cam = _read_metric(cfg.metrics_dir / 'eval_cam.json')
    sem = _read_metric(cfg.metrics_dir / 'eval_sem_seg.json')
    figures = {'cam_miou': cam['miou'] if cam else None, 'sem_seg_miou': sem['miou'] if sem else None}
    shift = (cam or {}).get('shift') or {}
    figures.update(cam_miou_shift=shift.get('miou'), leakage_usual=(cam or {}).get('leakage_usual'),
                   leakage_foreign=(cam or {}).get('leakage_foreign'), leakage_shift=shift.get('leakage'))
    if cam and 'best' in cam:
        figures['cam_best'] = cam['best']
    if sem and 'best' in sem:
        figures['sem_seg_best'] = sem['best']
    ins = _read_metric(cfg.metrics_dir / 'eval_ins_seg.json')
    if ins and 'map' in ins:
        figures.update(ins_seg_map25=ins['map25'], ins_seg_map50=ins['map'], ins_seg_map75=ins['map75'])
    ir = ir_label_quality(cfg, ids)
    if ir:
        figures['ir_precision'], figures['ir_coverage'] = ir['precision'], ir['coverage']
    figures.update(_seg_figures(cfg))
    return figures


def _seg_figures(cfg: Config) -> dict:
    """The segmentation network's held-out figures of a pass (None when not measured): seg_miou_val and
    seg_miou_val_crf, the val mIoU of its predictions without and with the CRF (metrics/eval_seg.json)."""
    seg = _read_metric(cfg.metrics_dir / 'eval_seg.json') or {}
    return {'seg_miou_val': seg.get('miou'), 'seg_miou_val_crf': seg.get('miou_crf')}


def _fmt(value: Optional[float]) -> str:
    return '-' if value is None else f'{100 * value:.1f}'


def summary_table(base: dict, cda: dict) -> str:
    rows = [('CAM mIoU', 'cam_miou')]
    context = [('CAM mIoU, context-shift split', 'cam_miou_shift'),
               ('CAM leakage, usual scene (lower is better)', 'leakage_usual'),
               ('CAM leakage, foreign scene (lower is better)', 'leakage_foreign'),
               ('CAM leakage, context-shift split (lower is better)', 'leakage_shift')]
    rows += [(title, key) for title, key in context if base.get(key) is not None or cda.get(key) is not None]
    rows += [('IR label precision', 'ir_precision'), ('IR label coverage', 'ir_coverage'),
             ('pseudo-mask mIoU', 'sem_seg_miou')]
    rows += [('segmentation network, val mIoU', 'seg_miou_val'),
             ('segmentation network, val mIoU + CRF', 'seg_miou_val_crf')]
    if base.get('ins_seg_map50') is not None or cda.get('ins_seg_map50') is not None:
        rows += [('instance mAP@0.25', 'ins_seg_map25'), ('instance mAP@0.5', 'ins_seg_map50'),
                 ('instance mAP@0.75', 'ins_seg_map75')]
    lines = ['| figure (%) | baseline | CDA | difference |', '|---|---|---|---|']
    for title, key in rows:
        b, c = base.get(key), cda.get(key)
        diff = f'{100 * (c - b):+.1f}' if b is not None and c is not None else '-'
        lines.append(f'| {title} | {_fmt(b)} | {_fmt(c)} | {diff} |')
    return '\n'.join(lines)


def write_summary(cfg: Config, timings: dict) -> Optional[str]:
    """metrics/summary.json and summary.md: baseline vs CDA figures. None when nothing was evaluated."""
    try:
        ids = dataloader.resolve_list(cfg.chainer_eval_set, 'train', cfg.dataset_root, cfg.sbd_root)
    except imutils.BadInputError:
        ids = []
    base, cda = _pass_figures(cfg, ids), _pass_figures(with_stage(cfg, 'cda'), ids)
    full = _seg_figures(with_stage(cfg, 'fully_supervised'))
    if base['cam_miou'] is None and base['sem_seg_miou'] is None and cda['cam_miou'] is None \
            and base['seg_miou_val'] is None and full['seg_miou_val'] is None:
        return None
    table = summary_table(base, cda)
    payload = {'baseline': base, 'cda': cda, 'step_seconds': timings, 'profile': cfg.profile}
    if full['seg_miou_val'] is not None:        # the same network on the ground truth: the upper bound
        payload['fully_supervised'] = full
        table += (f'\n\nfully supervised upper bound (the same segmentation network on the ground truth of the train '
                  f'list): val mIoU {_fmt(full["seg_miou_val"])}, + CRF {_fmt(full["seg_miou_val_crf"])}')
    bank = _read_metric(cfg.object_bank_dir / 'counts.json')
    if bank:
        payload['object_bank'] = bank
    for key in ('cam_miou', 'cam_miou_shift', 'sem_seg_miou', 'ins_seg_map50', 'seg_miou_val', 'seg_miou_val_crf'):
        if base.get(key) is not None and cda.get(key) is not None:
            payload[f'{key}_gain'] = cda[key] - base[key]
    metrics.write_json(cfg.work_dir / 'metrics' / 'summary.json', payload)
    with imutils.atomic_path(cfg.work_dir / 'metrics' / 'summary.md') as tmp:
        Path(tmp).write_text(table + '\n')
    return table


def _tile(image: np.ndarray, text: str) -> np.ndarray:
    tile = cv2.resize(np.ascontiguousarray(image), (TILE, TILE), interpolation=cv2.INTER_NEAREST)
    cv2.putText(tile, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _cam_heat(img: np.ndarray, cam_path: Path) -> np.ndarray:
    if not cam_path.is_file():
        return np.zeros_like(img)
    with np.load(cam_path) as cam:
        high_res = cam['high_res']
    heat = high_res.max(0) if len(high_res) else np.zeros(img.shape[:2], np.float32)
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (0.5 * img + 0.5 * colour).astype(np.uint8)


def _label_tile(path: Path, shape, colorize) -> np.ndarray:
    return colorize(imutils.read_label_png(path)) if path.is_file() else np.zeros(shape, np.uint8)


def _text_tile(lines: list[str]) -> np.ndarray:
    tile = np.zeros((TILE, TILE, 3), np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(tile, line, (3, 14 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def image_leakage(cam_path: Path, gt_path: Path) -> Optional[float]:
    """Mean over an image's classes of `metrics.cam_leakage`; None without a CAM, ground truth or mass."""
    if not (cam_path.is_file() and gt_path.is_file()):
        return None
    with np.load(cam_path) as cam:
        high_res = cam['high_res']
    gt = imutils.read_label_png(gt_path)
    if not len(high_res) or high_res.shape[1:] != gt.shape:
        return None
    values = metrics.cam_leakage(high_res, gt)
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


def leakiest_shift_ids(cfg: Config, count: int = SHEET_SHIFT_IMAGES) -> list[tuple[str, float]]:
    """(id, baseline leakage) of the context-shift images where the baseline CAM puts the largest share of
    its mass on background, most first; [] without a shift split or scene labels (VOC)."""
    shift = dataloader.shift_ids(cfg.dataset_root)
    if not shift or dataloader.load_scenes(cfg.dataset_root, common.dataset(cfg).class_names) is None:
        return []
    found = []
    for image_id in shift:
        value = image_leakage(cfg.cam_dir / f'{image_id}.npz',
                              cfg.dataset_root / 'SegmentationClass' / f'{image_id}.png')
        if value is not None:
            found.append((image_id, value))
    return sorted(found, key=lambda item: -item[1])[:count]


def contact_sheet(cfg: Config, ids: list[str], path: Path, shift_ids: Sequence[str] = ()) -> Path:
    """Rows of image | ground truth | CAM | IR label | pseudo mask, for the baseline and the CDA pass;
    then one row per context-shift image of `shift_ids`: image | ground truth | baseline CAM | CDA CAM |
    the leakage of both (shift images get no IR labels or pseudo masks)."""
    colorize = common.dataset(cfg).colorize
    stages = [('base', cfg)] + ([('CDA', with_stage(cfg, 'cda'))] if (cfg.work_dir / 'cda').is_dir() else [])
    rows = []
    for image_id in ids:
        img = imutils.read_rgb(cfg.dataset_root / 'JPEGImages' / f'{image_id}.jpg')
        gt = _label_tile(cfg.dataset_root / 'SegmentationClass' / f'{image_id}.png', img.shape, colorize)
        for name, stage_cfg in stages:
            tiles = [_tile(img, image_id[-6:]), _tile(gt, 'truth'),
                     _tile(_cam_heat(img, stage_cfg.cam_dir / f'{image_id}.npz'), f'{name} CAM'),
                     _tile(_label_tile(stage_cfg.relation_label_dir / f'{image_id}.png', img.shape, colorize),
                           f'{name} IR'),
                     _tile(_label_tile(stage_cfg.sem_seg_dir / f'{image_id}.png', img.shape, colorize),
                           f'{name} mask')]
            rows.append(np.concatenate(tiles, axis=1))
    for image_id in shift_ids:
        img = imutils.read_rgb(cfg.dataset_root / 'JPEGImages' / f'{image_id}.jpg')
        gt_path = cfg.dataset_root / 'SegmentationClass' / f'{image_id}.png'
        tiles = [_tile(img, f'{image_id[-6:]} shift'), _tile(_label_tile(gt_path, img.shape, colorize), 'truth')]
        leak = []
        for name, stage_cfg in stages:
            cam_path = stage_cfg.cam_dir / f'{image_id}.npz'
            tiles.append(_tile(_cam_heat(img, cam_path), f'{name} CAM'))
            value = image_leakage(cam_path, gt_path)
            leak.append(f'{name}: {"-" if value is None else f"{100 * value:.0f}%"}')
        if len(stages) == 1:
            tiles.append(_text_tile(['no CDA pass']))
        tiles.append(_text_tile(['CAM mass on', 'background:'] + leak))
        rows.append(np.concatenate(tiles, axis=1))
    imutils.save_rgb(path, np.concatenate(rows, axis=0))
    return path


def write_report(cfg: Config) -> Optional[Path]:
    """report.md with the summary table and the contact sheet; None before any CAM exists."""
    try:
        ids = dataloader.resolve_list(cfg.chainer_eval_set, 'train', cfg.dataset_root, cfg.sbd_root)
    except imutils.BadInputError:
        return None
    shown = [i for i in ids if (cfg.cam_dir / f'{i}.npz').is_file()][:SHEET_IMAGES]
    if not shown:
        return None
    shift_shown = [image_id for image_id, _ in leakiest_shift_ids(cfg)]
    sheet = contact_sheet(cfg, shown, cfg.work_dir / 'contact_sheet.png', shift_shown)
    summary = (cfg.work_dir / 'metrics' / 'summary.md')
    lines = ['# IRNet + CDA run report', '', f'Profile `{cfg.profile}`, dataset `{cfg.dataset_root}`.', '']
    if summary.is_file():
        lines += ['## Results (eval set)', '', summary.read_text(), '']
    for stage_cfg, title in ((cfg, 'baseline'), (with_stage(cfg, 'cda'), 'CDA')):
        for name in ('eval_cam', 'eval_sem_seg'):
            result = _read_metric(stage_cfg.metrics_dir / f'{name}.json')
            if result and 'best' in result:
                lines.append(f'- {title} {name}: best background threshold {result["best"]["threshold"]:.2f} '
                             f'gives mIoU {100 * result["best"]["miou"]:.1f} (configured '
                             f'{result["threshold"]:.2f}: {100 * result["miou"]:.1f})')
    for stage_cfg, title in ((cfg, 'baseline'), (with_stage(cfg, 'cda'), 'CDA')):
        result = _read_metric(stage_cfg.metrics_dir / 'eval_ins_seg.json')
        if result and 'map' in result:
            lines.append(f'- {title} instance masks: mAP {100 * result["map25"]:.1f} / {100 * result["map"]:.1f} / '
                         f'{100 * result["map75"]:.1f} at mask IoU 0.25 / 0.5 / 0.75 ({result["pred_instances"]} '
                         f'predicted, {result["gt_instances"]} ground-truth instances, {result["images"]} images)')
    for stage_cfg, title in ((cfg, 'baseline'), (with_stage(cfg, 'cda'), 'CDA'),
                             (with_stage(cfg, 'fully_supervised'), 'fully supervised (ground truth)')):
        result = _read_metric(stage_cfg.metrics_dir / 'eval_seg.json')
        if result and result.get('miou') is not None:
            crf = '-' if result.get('miou_crf') is None else f'{100 * result["miou_crf"]:.1f}'
            lines.append(f'- {title} segmentation network: val mIoU {100 * result["miou"]:.1f}, with CRF {crf} '
                         f'({result["images"]} held-out images)')
    if any((_read_metric(c.metrics_dir / 'eval_cam.json') or {}).get('leakage_usual') is not None
           for c in (cfg, with_stage(cfg, 'cda'))):
        lines.append('- CAM leakage: the share of a class\'s CAM mass on ground-truth background (mean over image '
                     'and class pairs; lower is better), on eval-set images in the class\'s usual scene, in a '
                     'foreign one, and on the context-shift split, where every object is out of its usual scene')
    lines += ['', '## Contact sheet', '', 'image | ground truth | CAM heat map | IR label | pseudo mask; '
              'a baseline row, then a CDA row, per image.', '']
    if shift_shown:
        lines += [f'The last {len(shift_shown)} rows are context-shift images, those where the baseline CAM puts '
                  'the largest share of its mass on the background: image | ground truth | baseline CAM | CDA CAM '
                  '| that share for each.', '']
    lines += [f'![contact sheet]({sheet.name})', '']
    path = cfg.work_dir / 'report.md'
    with imutils.atomic_path(path) as tmp:
        Path(tmp).write_text('\n'.join(lines))
    return path
