"""Object bank for Context Decoupling Augmentation: single-class objects cut out of pseudo masks.

Core: `extract_object` keeps a label map only if it holds exactly one foreground class covering a
fraction of the image within [min_fg_ratio, max_fg_ratio], and returns that class and the crop to the
foreground's bounding box. Driver: `run(cfg)` applies it to the masks of exactly the train list's
images, as the CDA reference does (train_aug on VOC): the baseline's pseudo masks, which it asks the
pipeline to make first for the images that lack one (`step.pipeline.need`), or the masks of those images
found in --cda_bank_source. It writes
`<work_dir>/object_bank/<class>/<id>.png` and `<id>_mask.png`, then `counts.json` (masks scanned,
objects per class) and, last, `index.json` (what `misc.cda.ObjectBank.load` reads).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from misc.cda import ObjectBank, mask_bbox
from misc import fingerprint, torchutils
from misc.config import Config
from misc.imutils import BadInputError, atomic_path, read_label_png, read_rgb, save_label_png, save_rgb
from misc.progress import progress
from step import common, pipeline

logger = logging.getLogger(__name__)


def single_class(mask: np.ndarray, min_fg_ratio: float = 0.1, max_fg_ratio: float = 0.7,
                 num_classes: int = 20) -> Optional[int]:
    """The label (1..num_classes, 20 on VOC) of an (H, W) label map that passes the bank's filter, else None.

    Foreground is labels 1..num_classes; 0 (background) and 255 (ignore) are neither counted as a class
    nor as foreground area.
    """
    foreground = (mask >= 1) & (mask <= num_classes)
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
                   max_fg_ratio: float = 0.7, num_classes: int = 20) -> Optional[tuple[int, np.ndarray, np.ndarray]]:
    """image (H, W, 3) uint8, mask (H, W) uint8 label map -> (class 0..num_classes-1, image crop (h, w, 3) uint8,
    bool mask crop (h, w)) over the foreground's bounding box, or None if the mask is filtered out."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f'image {image.shape[:2]} and mask {mask.shape} differ in size')
    label = single_class(mask, min_fg_ratio, max_fg_ratio, num_classes)
    if label is None:
        return None
    foreground = mask == label
    top, bottom, left, right = mask_bbox(foreground)
    crop = np.ascontiguousarray(image[top:bottom, left:right], dtype=np.uint8)
    return label - 1, crop, foreground[top:bottom, left:right].copy()


def settings(cfg: Config) -> tuple[str, ...]:
    return ('cda_min_fg_ratio', 'cda_max_fg_ratio', 'cda_bank_source', 'train_list')


def reads(cfg: Config) -> tuple[str, ...]:
    """The baseline's pseudo masks, unless the bank is cut from --cda_bank_source."""
    return () if cfg.cda_bank_source is not None else ('make_sem_seg',)


def extra_inputs(cfg: Config) -> dict:
    if cfg.cda_bank_source is None or not Path(cfg.cda_bank_source).is_dir():
        return {}
    return {'bank_source': fingerprint.folder_signature(Path(cfg.cda_bank_source))}


def outputs(cfg: Config) -> list[Path]:
    return [cfg.object_bank_dir]


def _summary(counts: dict[str, int], masks_scanned: int, **extra: Any) -> dict[str, Any]:
    return {'objects': sum(counts.values()), 'counts': counts, 'masks_scanned': masks_scanned, **extra}


def _clear_bank(bank_dir: Path, class_names: Sequence[str]) -> None:
    """Remove what an earlier build wrote (index first, so a half-cleared bank is never loaded)."""
    for name in ('index.json', 'counts.json'):
        (bank_dir / name).unlink(missing_ok=True)
    for class_name in class_names:
        if (bank_dir / class_name).is_dir():
            shutil.rmtree(bank_dir / class_name)


def _write_json(path: Path, value: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1))


def source_masks(cfg: Config, ids: Sequence[str]) -> tuple[Path, list[Path]]:
    """(source folder, the mask paths the bank reads): exactly one per train-list image that has one.

    Without --cda_bank_source the baseline's pseudo masks of the train list are made first (those that
    exist and match the current settings are kept), as the reference builds its bank from train_aug.
    """
    if cfg.cda_bank_source is None:
        pipeline.need(cfg, 'make_sem_seg', ids=ids, label='make_sem_seg (train list, for the object bank)')
        source = cfg.sem_seg_dir
        paths = [source / f'{i}.png' for i in ids]
        common.require_outputs(ids, lambda i: source / f'{i}.png', 'pseudo masks of the train list', 'make_sem_seg')
        return source, paths
    source = Path(cfg.cda_bank_source)
    if not source.is_dir():
        raise BadInputError(f'--cda_bank_source {source}: no such folder; give a folder of VOC-style label PNGs')
    paths = [source / f'{i}.png' for i in ids if (source / f'{i}.png').is_file()]
    if not paths:
        raise BadInputError(f'--cda_bank_source {source}: holds no label PNG of the train list\'s images (first id '
                            f'{ids[0] if ids else "-"}); give a folder with masks named <image id>.png')
    if len(paths) < len(ids):
        logger.info('object bank: %s holds masks of %d of the %d train-list images; the others are skipped',
                    source, len(paths), len(ids))
    return source, paths


def run(cfg: Config) -> dict[str, Any]:
    """Build the object bank; returns {'objects', 'counts' {class_name: n}, 'masks_scanned'}."""
    bank_dir = cfg.object_bank_dir
    if (bank_dir / 'index.json').is_file() and not cfg.overwrite:
        try:
            bank = ObjectBank.load(bank_dir)
        except BadInputError as e:       # empty or unreadable: build it again rather than fail later
            logger.info('object bank: cannot reuse (%s); rebuilding', e)
        else:
            counts = {name: bank.count(c) for c, name in enumerate(common.dataset(cfg).class_names)}
            logger.info('object bank: reusing %s (%d objects); pass --overwrite to rebuild', bank_dir, len(bank))
            scanned = _read_counts(bank_dir).get('masks_scanned', 0)
            return _summary(counts, scanned, reused=True)

    ids = common.train_ids(cfg)
    source, label_paths = source_masks(cfg, ids)
    if torchutils.is_main_process():
        _build(cfg, label_paths, bank_dir)
    torchutils.barrier()
    counts = _read_counts(bank_dir)['per_class']
    n_objects = sum(counts.values())
    logger.info('object bank: %d objects from %d masks of the train list in %s -> %s', n_objects,
                len(label_paths), source, bank_dir)
    logger.info('object bank per class: %s', ', '.join(f'{name} {n}' for name, n in counts.items()))
    if n_objects == 0:
        raise BadInputError(f'object bank: none of the {len(label_paths)} masks in {source} holds one class covering '
                            f'{cfg.cda_min_fg_ratio:.2f}..{cfg.cda_max_fg_ratio:.2f} of its image; widen '
                            '--cda_min_fg_ratio/--cda_max_fg_ratio, or pass --cda_bank_source with other masks')
    return _summary(counts, len(label_paths))


def _read_counts(bank_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((bank_dir / 'counts.json').read_text())
    except (OSError, ValueError):
        return {}


def _build(cfg: Config, label_paths: Sequence[Path], bank_dir: Path) -> None:
    """Cut the objects out of the masks; write the crops, counts.json and, last, index.json."""
    class_names = common.dataset(cfg).class_names
    _clear_bank(bank_dir, class_names)
    image_dir = cfg.dataset_root / 'JPEGImages'
    entries: list[dict[str, Any]] = []
    for label_path in progress(label_paths, desc='make_object_bank', unit='img'):
        image_id = label_path.stem
        image_path = image_dir / f'{image_id}.jpg'
        if not image_path.is_file():
            raise BadInputError(f'{image_path}: image for {label_path} not found; check the dataset root and '
                                '--cda_bank_source')
        mask = read_label_png(label_path)
        with Image.open(image_path) as header:      # size from the header: no decode for rejected masks
            image_size = (header.height, header.width)
        if image_size != mask.shape:
            raise BadInputError(f'{label_path}: mask size {mask.shape} differs from image {image_path} size '
                                f'{image_size}; the bank source must hold masks of the dataset\'s images')
        if single_class(mask, cfg.cda_min_fg_ratio, cfg.cda_max_fg_ratio, len(class_names)) is None:
            continue
        found = extract_object(read_rgb(image_path), mask, cfg.cda_min_fg_ratio, cfg.cda_max_fg_ratio,
                               len(class_names))
        if found is None:
            continue
        cls, crop, crop_mask = found
        name = class_names[cls]
        image_rel, mask_rel = f'{name}/{image_id}.png', f'{name}/{image_id}_mask.png'
        save_rgb(bank_dir / image_rel, crop)
        save_label_png(bank_dir / mask_rel, crop_mask.astype(np.uint8) * 255)
        entries.append({'class': cls, 'name': name, 'image': image_rel, 'mask': mask_rel, 'source': image_id})

    per_class = {name: 0 for name in class_names}
    for entry in entries:
        per_class[entry['name']] += 1
    _write_json(bank_dir / 'counts.json', {'masks_scanned': len(label_paths), 'objects': len(entries),
                                           'per_class': per_class})
    _write_json(bank_dir / 'index.json', entries)     # last: its presence marks a complete bank
