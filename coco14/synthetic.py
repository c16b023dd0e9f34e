"""A small, context-biased synthetic dataset written in the MS COCO 2014 layout, for the COCO demo and tests.

It is voc12.synthetic's drawing (shape families x texture families x hues, each class with a usual
scene, an image in its primary class's usual scene with probability `context_bias`) with COCO's 80
categories and their real ids (1..90 with gaps), so that the COCO loader (coco14.dataset) reads it exactly
as it reads the real dataset, and context still matters. Class c draws the shape/texture combination
c % 20 (VOC's 20) in hue group c // 20 (45 hue units apart), so classes sharing a combination differ in
colour.

Layout written under `out_dir`:

    train2014/COCO_train2014_<12-digit id>.jpg     RGB, JPEG quality 95
    val2014/COCO_val2014_<12-digit id>.jpg
    annotations/instances_{train,val}2014.json     images, categories, one annotation per visible
                                                   instance: compressed RLE ('counts' a str), area, bbox,
                                                   iscrowd 0 (instances do not overlap: occlusion is
                                                   resolved in the drawing)
    scenes.json, usual_scenes.json                 as in voc12.synthetic (the context figures)
    synthetic.json                                 the generation parameters, written last

Image ids run 1..n_train (train) then on (val); image `i` is drawn from `default_rng([seed, i])`.

`n_classes` below 80 draws the images from every (80 // n_classes)-th category only (`drawn_categories`;
the demo: 40, every other one, spanning all six scenes): the annotation files still list all 80
categories, as COCO's do, and the others simply have no instances. A from-scratch classifier needs a
dozen images or more per class to localise anything: the demo's 480 images over 80 classes (six each)
left its CAMs at 0.9 mIoU (docs/coco.md).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from misc.imutils import save_rgb
from voc12.synthetic import (ClassSet, SCENES, SHAPES, TEXTURES, VOC_CLASSES, _write_text, render_image)

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1

# MS COCO 2014's 80 categories (id, name), the public instances_*.json values, each with a usual scene.
CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (1, 'person', 'sand'), (2, 'bicycle', 'road'), (3, 'car', 'road'), (4, 'motorcycle', 'road'),
    (5, 'airplane', 'sky'), (6, 'bus', 'road'), (7, 'train', 'road'), (8, 'truck', 'road'), (9, 'boat', 'water'),
    (10, 'traffic light', 'sky'), (11, 'fire hydrant', 'road'), (13, 'stop sign', 'road'),
    (14, 'parking meter', 'road'), (15, 'bench', 'grass'), (16, 'bird', 'sky'), (17, 'cat', 'indoor'),
    (18, 'dog', 'grass'), (19, 'horse', 'grass'), (20, 'sheep', 'grass'), (21, 'cow', 'grass'),
    (22, 'elephant', 'water'), (23, 'bear', 'water'), (24, 'zebra', 'grass'), (25, 'giraffe', 'grass'),
    (27, 'backpack', 'road'), (28, 'umbrella', 'sky'), (31, 'handbag', 'road'), (32, 'tie', 'sand'),
    (33, 'suitcase', 'road'), (34, 'frisbee', 'sky'), (35, 'skis', 'water'), (36, 'snowboard', 'water'),
    (37, 'sports ball', 'grass'), (38, 'kite', 'sky'), (39, 'baseball bat', 'grass'),
    (40, 'baseball glove', 'grass'), (41, 'skateboard', 'road'), (42, 'surfboard', 'water'),
    (43, 'tennis racket', 'grass'), (44, 'bottle', 'indoor'), (46, 'wine glass', 'indoor'), (47, 'cup', 'indoor'),
    (48, 'fork', 'indoor'), (49, 'knife', 'indoor'), (50, 'spoon', 'indoor'), (51, 'bowl', 'indoor'),
    (52, 'banana', 'sand'), (53, 'apple', 'sand'), (54, 'sandwich', 'sand'), (55, 'orange', 'sand'),
    (56, 'broccoli', 'sand'), (57, 'carrot', 'sand'), (58, 'hot dog', 'sand'), (59, 'pizza', 'sand'),
    (60, 'donut', 'sand'), (61, 'cake', 'sand'), (62, 'chair', 'indoor'), (63, 'couch', 'indoor'),
    (64, 'potted plant', 'indoor'), (65, 'bed', 'indoor'), (67, 'dining table', 'indoor'), (70, 'toilet', 'indoor'),
    (72, 'tv', 'indoor'), (73, 'laptop', 'indoor'), (74, 'mouse', 'indoor'), (75, 'remote', 'indoor'),
    (76, 'keyboard', 'indoor'), (77, 'cell phone', 'indoor'), (78, 'microwave', 'indoor'), (79, 'oven', 'indoor'),
    (80, 'toaster', 'indoor'), (81, 'sink', 'indoor'), (82, 'refrigerator', 'indoor'), (84, 'book', 'indoor'),
    (85, 'clock', 'sky'), (86, 'vase', 'indoor'), (87, 'scissors', 'indoor'), (88, 'teddy bear', 'indoor'),
    (89, 'hair drier', 'indoor'), (90, 'toothbrush', 'indoor'),
)
NAMES = tuple(name for _, name, _ in CATEGORIES)

# Usual companions (an extra object is drawn from these half the time), loosely after COCO's photos.
_COMPANIONS = (
    ('person', ('person', 'bicycle', 'motorcycle', 'horse', 'skateboard', 'surfboard', 'umbrella', 'kite')),
    ('dining table', ('cup', 'fork', 'knife', 'bowl', 'pizza', 'chair')), ('couch', ('tv', 'remote', 'cat')),
    ('car', ('car', 'truck', 'traffic light')), ('bus', ('car', 'person')), ('sheep', ('sheep',)),
    ('cow', ('cow',)), ('zebra', ('zebra', 'giraffe')), ('laptop', ('mouse', 'keyboard')),
    ('sink', ('toothbrush', 'hair drier')), ('oven', ('microwave', 'refrigerator')),
)


def drawn_categories(n_classes: int = len(CATEGORIES)) -> tuple[int, ...]:
    """Indices (0..79) of the categories the images are drawn from: every (80 // n_classes)-th, n_classes of them."""
    if not 1 <= n_classes <= len(CATEGORIES):
        raise ValueError(f'n_classes must be in 1..{len(CATEGORIES)}, got {n_classes}')
    step = len(CATEGORIES) // n_classes
    return tuple(range(0, step * n_classes, step))


def coco_classes(drawn: Sequence[int] = tuple(range(len(CATEGORIES)))) -> ClassSet:
    """The drawing of the categories `drawn` (indices 0..79; class k of the set is category drawn[k]): category
    c takes combination c % 20 of VOC's (shape, texture, hue) in hue group c // 20, whatever else is drawn."""
    combos = VOC_CLASSES.count
    shape = tuple(VOC_CLASSES.shape[c % combos] for c in drawn)
    texture = tuple(VOC_CLASSES.texture[c % combos] for c in drawn)
    hue = tuple((VOC_CLASSES.hue[c % combos] + 45 * (c // combos)) % 180 for c in drawn)
    index = {NAMES[c]: k for k, c in enumerate(drawn)}
    co_occur = {index[a]: tuple(index[b] for b in partners if b in index)
                for a, partners in _COMPANIONS if a in index}
    co_occur = {k: partners for k, partners in co_occur.items() if partners}
    assert set(shape) <= set(SHAPES) and set(texture) <= set(TEXTURES)
    return ClassSet(tuple(NAMES[c] for c in drawn), shape, texture, hue,
                    tuple(CATEGORIES[c][2] for c in drawn), co_occur)


def file_stem(split: str, image_id: int) -> str:
    return f'COCO_{split}2014_{image_id:012d}'


def _annotations(sample, image_id: int, first_id: int, drawn: Sequence[int]) -> list[dict]:
    from pycocotools import mask as mask_util
    out = []
    for k, (cls, _, _) in enumerate(sample.objects):
        binary = np.asfortranarray((sample.instance_map == k + 1).astype(np.uint8))
        rle = mask_util.encode(binary)
        area, bbox = float(mask_util.area(rle)), [float(v) for v in mask_util.toBbox(rle)]
        rle['counts'] = rle['counts'].decode('ascii')
        out.append({'id': first_id + len(out), 'image_id': image_id, 'category_id': CATEGORIES[drawn[cls]][0],
                    'segmentation': rle, 'area': area, 'bbox': bbox, 'iscrowd': 0})
    return out


def generate(out_dir: str | Path, n_train: int = 400, n_val: int = 100, size: int = 128,
             context_bias: float = 0.85, seed: int = 0, n_classes: int = len(CATEGORIES)) -> Path:
    """Write the synthetic COCO 2014 dataset under `out_dir` (skipped when synthetic.json records the same
    parameters) and return that path; its images show `n_classes` of the 80 categories (`drawn_categories`)."""
    if n_train < 1 or n_val < 1:
        raise ValueError(f'need n_train, n_val >= 1, got {n_train}, {n_val}')
    drawn = drawn_categories(n_classes)
    out = Path(out_dir)
    params = {'n_train': n_train, 'n_val': n_val, 'size': size, 'context_bias': float(context_bias), 'seed': seed,
              'version': GENERATOR_VERSION}
    if n_classes != len(CATEGORIES):      # a dataset of all 80, as written before the option, stays up to date
        params['n_classes'] = n_classes
    marker = out / 'synthetic.json'
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                logger.info('synthetic COCO at %s is up to date', out)
                return out
        except (ValueError, OSError):
            pass
        marker.unlink()
    start = time.perf_counter()
    classes = coco_classes(drawn)
    categories = [{'id': cid, 'name': name, 'supercategory': scene} for cid, name, scene in CATEGORIES]
    scenes: dict[str, str] = {}
    ann_id = 1
    for split, indices in (('train', range(n_train)), ('val', range(n_train, n_train + n_val))):
        images, annotations = [], []
        for index in indices:
            image_id = index + 1
            sample = render_image(index, size, context_bias, seed, classes)
            stem = file_stem(split, image_id)
            save_rgb(out / f'{split}2014' / f'{stem}.jpg', sample.image)
            images.append({'id': image_id, 'file_name': f'{stem}.jpg', 'height': size, 'width': size})
            found = _annotations(sample, image_id, ann_id, drawn)
            ann_id += len(found)
            annotations += found
            scenes[stem] = sample.scene
        payload = {'info': {'description': 'synthetic COCO 2014 (coco14.synthetic)'}, 'licenses': [],
                   'images': images, 'annotations': annotations, 'categories': categories}
        _write_text(out / 'annotations' / f'instances_{split}2014.json', json.dumps(payload))
    _write_text(out / 'scenes.json', json.dumps(scenes, indent=1) + '\n')
    usual = {name: scene for _, name, scene in CATEGORIES}
    _write_text(out / 'usual_scenes.json', json.dumps(usual, indent=1) + '\n')
    _write_text(marker, json.dumps(params, indent=1) + '\n')
    logger.info('wrote %d synthetic COCO images (%d of the 80 classes, scenes %s) to %s in %.1f s', n_train + n_val,
                len(drawn), ', '.join(SCENES), out, time.perf_counter() - start)
    return out
