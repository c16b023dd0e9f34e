"""End-of-run summary (baseline vs CDA) and a report with a contact sheet a person can look at."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from misc import imutils, metrics
from misc.config import Config, with_stage
from voc12 import dataloader
from voc12.classes import IGNORE, colorize

SHEET_IMAGES = 6
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
        path = cfg.ir_label_dir / f'{image_id}.png'
        gt_path = cfg.dataset_root / 'SegmentationClass' / f'{image_id}.png'
        if not path.is_file() or not gt_path.is_file():
            continue
        label, gt = imutils.read_label_png(path), imutils.read_label_png(gt_path)
        if label.shape != gt.shape:
            continue
        valid = gt != IGNORE
        has_label = valid & (label != IGNORE)
        agree += int((label[has_label] == gt[has_label]).sum())
        labelled += int(has_label.sum())
        total += int(valid.sum())
    if total == 0:
        return None
    return {'precision': agree / max(labelled, 1), 'coverage': labelled / total}


def _pass_figures(cfg: Config, ids: list[str]) -> dict:
    cam = _read_metric(cfg.metrics_dir / 'eval_cam.json')
    sem = _read_metric(cfg.metrics_dir / 'eval_sem_seg.json')
    figures = {'cam_miou': cam['miou'] if cam else None, 'sem_seg_miou': sem['miou'] if sem else None}
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
    return figures


def _fmt(value: Optional[float]) -> str:
    return '-' if value is None else f'{100 * value:.1f}'


def summary_table(base: dict, cda: dict) -> str:
    rows = [('CAM mIoU', 'cam_miou'), ('IR label precision', 'ir_precision'),
            ('IR label coverage', 'ir_coverage'), ('pseudo-mask mIoU', 'sem_seg_miou')]
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
    if base['cam_miou'] is None and base['sem_seg_miou'] is None and cda['cam_miou'] is None:
        return None
    table = summary_table(base, cda)
    payload = {'baseline': base, 'cda': cda, 'step_seconds': timings, 'profile': cfg.profile}
    bank = _read_metric(cfg.object_bank_dir / 'counts.json')
    if bank:
        payload['object_bank'] = bank
    for key in ('cam_miou', 'sem_seg_miou', 'ins_seg_map50'):
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


def _label_tile(path: Path, shape) -> np.ndarray:
    return colorize(imutils.read_label_png(path)) if path.is_file() else np.zeros(shape, np.uint8)


def contact_sheet(cfg: Config, ids: list[str], path: Path) -> Path:
    """Rows of image | ground truth | CAM | IR label | pseudo mask, for the baseline and the CDA pass."""
    stages = [('base', cfg)] + ([('CDA', with_stage(cfg, 'cda'))] if (cfg.work_dir / 'cda').is_dir() else [])
    rows = []
    for image_id in ids:
        img = imutils.read_rgb(cfg.dataset_root / 'JPEGImages' / f'{image_id}.jpg')
        gt = _label_tile(cfg.dataset_root / 'SegmentationClass' / f'{image_id}.png', img.shape)
        for name, stage_cfg in stages:
            tiles = [_tile(img, image_id[-6:]), _tile(gt, 'truth'),
                     _tile(_cam_heat(img, stage_cfg.cam_dir / f'{image_id}.npz'), f'{name} CAM'),
                     _tile(_label_tile(stage_cfg.ir_label_dir / f'{image_id}.png', img.shape), f'{name} IR'),
                     _tile(_label_tile(stage_cfg.sem_seg_dir / f'{image_id}.png', img.shape), f'{name} mask')]
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
    sheet = contact_sheet(cfg, shown, cfg.work_dir / 'contact_sheet.png')
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
    lines += ['', '## Contact sheet', '', 'image | ground truth | CAM heat map | IR label | pseudo mask; '
              'a baseline row, then a CDA row, per image.', '', f'![contact sheet]({sheet.name})', '']
    path = cfg.work_dir / 'report.md'
    with imutils.atomic_path(path) as tmp:
        Path(tmp).write_text('\n'.join(lines))
    return path
