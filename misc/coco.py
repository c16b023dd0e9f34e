"""Instance masks as a COCO-format annotation file, for Mask R-CNN trainers (torchvision, detectron2, mmdetection).

    images       {'id': 1.., 'file_name': '<voc id>.jpg', 'height', 'width'}, in list order
    categories   {'id', 'name', 'supercategory': dataset name}: on VOC ids 1..20 (class index + 1), on COCO
                 the annotation files' own ids (1..90 with gaps; `DatasetInfo.category_ids`)
    annotations  {'id': 1.., 'image_id', 'category_id', 'segmentation': compressed RLE with 'counts' a str,
                  'area', 'bbox': [x, y, w, h], 'score', 'iscrowd': 0}

Masks are encoded with `pycocotools.mask` (column-major RLE, as COCO stores it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from misc import imutils
from misc.dataset import DatasetInfo


def categories(dataset: DatasetInfo) -> list[dict]:
    return [{'id': dataset.category_id(i), 'name': name, 'supercategory': dataset.name}
            for i, name in enumerate(dataset.class_names)]


def encode_masks(masks: np.ndarray) -> list[dict]:
    """(R, H, W) bool -> R compressed RLEs {'size': [H, W], 'counts': str}."""
    from pycocotools import mask as mask_util
    if len(masks) == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(np.moveaxis(masks, 0, -1).astype(np.uint8)))
    for rle in rles:
        rle['counts'] = rle['counts'].decode('ascii')
    return rles


def annotations_of(masks: np.ndarray, classes: np.ndarray, scores: np.ndarray, image_id: int,
                   first_id: int, min_score: float = 0.0,
                   category_id: Callable[[int], int] = lambda c: c + 1) -> list[dict]:
    """COCO annotations of one image's instances (R, H, W); only those scoring above `min_score`;
    `category_id(class index)` the id written (VOC: index + 1)."""
    from pycocotools import mask as mask_util
    keep = np.flatnonzero(np.asarray(scores) > min_score)
    rles = encode_masks(np.asarray(masks, bool)[keep])
    out = []
    for n, (r, rle) in enumerate(zip(keep, rles)):
        binary = dict(rle, counts=rle['counts'].encode('ascii'))
        out.append({'id': first_id + n, 'image_id': image_id, 'category_id': int(category_id(int(classes[r]))),
                    'segmentation': rle, 'area': float(mask_util.area(binary)),
                    'bbox': [float(v) for v in mask_util.toBbox(binary)], 'score': float(scores[r]),
                    'iscrowd': 0})
    return out


def export(ids: Sequence[str], read: Callable[[str], dict], dataset: DatasetInfo, min_score: float = 0.0) -> dict:
    """The COCO payload of the images `ids`; `read(id)` gives {'masks' (R, H, W), 'classes' (R,) class
    indices 0..num_classes-1, 'scores' (R,)}. Instances scoring `min_score` or less are left out (the default drops
    the pieces under 1% of the image, which the instance step scores 0)."""
    images, annotations = [], []
    for number, image_id in enumerate(ids, start=1):
        found = read(image_id)
        height, width = found['masks'].shape[1:]
        images.append({'id': number, 'file_name': f'{image_id}.jpg', 'height': int(height), 'width': int(width)})
        annotations += annotations_of(found['masks'], found['classes'], found['scores'], number,
                                      len(annotations) + 1, min_score, dataset.category_id)
    return {'info': {'description': 'instance pseudo masks (IRNet)'}, 'licenses': [],
            'images': images, 'annotations': annotations, 'categories': categories(dataset)}


def write(path: Path, payload: dict) -> None:
    with imutils.atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(payload))
