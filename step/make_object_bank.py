"""Object bank for Context Decoupling Augmentation: single-class objects cut out of pseudo masks.

Core: `extract_object` keeps a label map only if it holds exactly one foreground class covering a
fraction of the image within [min_fg_ratio, max_fg_ratio], and returns that class and the crop to the
foreground's bounding box. Driver: `run(cfg)` applies it to every mask of the baseline pass (or of
--cda_bank_source) and writes `<work_dir>/object_bank/<class>/<id>.png` and `<id>_mask.png`, then
`counts.json` and, last, `index.json` (what `misc.cda.ObjectBank.load` reads).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from misc.cda import ObjectBank, mask_bbox
from misc.config import Config
from misc.imutils import BadInputError, atomic_path, read_label_png, read_rgb, save_label_png, save_rgb
from voc12.classes import CAT_LIST, N_CAT

logger = logging.getLogger(__name__)


def single_class(mask: np.ndarray, min_fg_ratio: float = 0.1, max_fg_ratio: float = 0.7) -> Optional[int]:
    """The label (1..20) of an (H, W) label map that passes the bank's filter, else None.

    Foreground is labels 1..20; 0 (background) and 255 (ignore) are neither counted as a class nor as
    foreground area.
    """
    foreground = (mask >= 1) & (mask <= N_CAT)
    n_foreground = int(np.count_nonzero(foreground))
    if n_foreground == 0:
        return None
    labels = np.unique(mask[foreground])
    if labels.size != 1:
        return None
    ratio = n_foreground / mask.size
    # A hair of tolerance so that a ratio exactly at a bound is kept despite float rounding.
    if not (min_fg_ratio - 1e-9 <= ratio <= max_fg_ratio + 1e-9):
        return None
    return int(labels[0])


def extract_object(image: np.ndarray, mask: np.ndarray, min_fg_ratio: float = 0.1,
                   max_fg_ratio: float = 0.7) -> Optional[tuple[int, np.ndarray, np.ndarray]]:
    """image (H, W, 3) uint8, mask (H, W) uint8 VOC label map -> (class 0..19, image crop (h, w, 3) uint8,
    bool mask crop (h, w)) over the foreground's bounding box, or None if the mask is filtered out."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f'image {image.shape[:2]} and mask {mask.shape} differ in size')
    label = single_class(mask, min_fg_ratio, max_fg_ratio)
    if label is None:
        return None
    foreground = mask == label
    top, bottom, left, right = mask_bbox(foreground)
    crop = np.ascontiguousarray(image[top:bottom, left:right], dtype=np.uint8)
    return label - 1, crop, foreground[top:bottom, left:right].copy()


def _summary(counts: dict[str, int], images_scanned: int, **extra: Any) -> dict[str, Any]:
    return {'objects': sum(counts.values()), 'counts': counts, 'images_scanned': images_scanned, **extra}


def _clear_bank(bank_dir: Path) -> None:
    """Remove what an earlier build wrote (index first, so a half-cleared bank is never loaded)."""
    for name in ('index.json', 'counts.json'):
        (bank_dir / name).unlink(missing_ok=True)
    for class_name in CAT_LIST:
        if (bank_dir / class_name).is_dir():
            shutil.rmtree(bank_dir / class_name)


def _write_json(path: Path, value: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1))


def run(cfg: Config) -> dict[str, Any]:
    """Build the object bank; returns {'objects', 'counts' {class_name: n}, 'images_scanned'}."""
    source = Path(cfg.cda_bank_source) if cfg.cda_bank_source is not None else cfg.work_dir / 'sem_seg'
    bank_dir = cfg.object_bank_dir

    if (bank_dir / 'index.json').is_file() and not cfg.overwrite:
        try:
            bank = ObjectBank.load(bank_dir)
        except BadInputError as e:       # empty or unreadable: build it again rather than fail later
            logger.info('object bank: cannot reuse (%s); rebuilding', e)
        else:
            counts = {name: bank.count(c) for c, name in enumerate(CAT_LIST)}
            logger.info('object bank: reusing %s (%d objects); pass --overwrite to rebuild', bank_dir, len(bank))
            return _summary(counts, 0, reused=True)

    # Skip the temporary files of interrupted atomic writes (".<name>.<random>.tmp.png").
    label_paths = sorted(p for p in source.glob('*.png') if not p.name.startswith('.')) if source.is_dir() else []
    if not label_paths:
        raise BadInputError(f'{source}: no label PNGs for the object bank; run make_sem_seg first or pass '
                            '--cda_bank_source')

    _clear_bank(bank_dir)
    image_dir = cfg.dataset_root / 'JPEGImages'
    entries: list[dict[str, Any]] = []
    for label_path in tqdm(label_paths, desc='make_object_bank', unit='img'):
        image_id = label_path.stem
        image_path = image_dir / f'{image_id}.jpg'
        if not image_path.is_file():
            raise BadInputError(f'{image_path}: image for {label_path} not found; check --voc12_root and '
                                '--cda_bank_source')
        mask = read_label_png(label_path)
        with Image.open(image_path) as header:      # size from the header: no decode for rejected masks
            image_size = (header.height, header.width)
        if image_size != mask.shape:
            raise BadInputError(f'{label_path}: mask size {mask.shape} differs from image {image_path} size '
                                f'{image_size}; the bank source must hold masks of the VOC images')
        if single_class(mask, cfg.cda_min_fg_ratio, cfg.cda_max_fg_ratio) is None:
            continue
        found = extract_object(read_rgb(image_path), mask, cfg.cda_min_fg_ratio, cfg.cda_max_fg_ratio)
        if found is None:
            continue
        cls, crop, crop_mask = found
        name = CAT_LIST[cls]
        image_rel, mask_rel = f'{name}/{image_id}.png', f'{name}/{image_id}_mask.png'
        save_rgb(bank_dir / image_rel, crop)
        save_label_png(bank_dir / mask_rel, crop_mask.astype(np.uint8) * 255, palette=False)
        entries.append({'class': cls, 'name': name, 'image': image_rel, 'mask': mask_rel, 'source': image_id})

    counts = {name: 0 for name in CAT_LIST}
    for entry in entries:
        counts[entry['name']] += 1
    _write_json(bank_dir / 'counts.json', counts)
    _write_json(bank_dir / 'index.json', entries)     # last: its presence marks a complete bank

    logger.info('object bank: %d objects from %d masks in %s -> %s', len(entries), len(label_paths), source,
                bank_dir)
    logger.info('object bank per class: %s', ', '.join(f'{name} {n}' for name, n in counts.items()))
    if not entries:
        logger.warning('object bank is empty: no mask in %s holds one class covering %.2f..%.2f of the image; '
                       'CDA training cannot run', source, cfg.cda_min_fg_ratio, cfg.cda_max_fg_ratio)
    return _summary(counts, len(label_paths))
