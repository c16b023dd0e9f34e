"""MS COCO 2014 instance annotations -> what the WSSS pipeline reads: class indices, image-level labels,
class masks and image lists.

Conventions, and where they come from:
- **Class indices.** The 80 COCO category ids (1..90 with gaps) map to 1..80 in ascending id order;
  0 is background. This is the mapping of every IRNet-family COCO code base (ReCAM's `category_map`).
  The class names are read from the annotation file's `categories`, never from a list kept here.
- **Image-level labels.** (80,) float32 multi-hot over every annotation of the image, crowd regions
  included, as ReCAM's `COCOClassificationDataset` builds them from `CocoDetection` targets.
- **Class masks.** Made through pycocotools' `annToMask` (never by rasterising polygons by hand):
  the non-crowd instances are painted in the annotation file's order, a later instance overwriting an
  earlier one where they overlap, and crowd regions stay background. This is ReCAM's `annToMask.py`,
  whose masks the published IRNet/ReCAM COCO figures were scored on. (coco2voc instead paints by
  increasing area; we follow ReCAM so that our COCO val mIoU is comparable with the IRNet family's.)
- **Lists.** train 82,081 / val 40,137 on the real files: the images that have at least one
  annotation (crowd included). Ids are the file names without extension (`COCO_train2014_000000000009`).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterable

import numpy as np


def load_coco(path: Path):
    """A pycocotools COCO index of an instances JSON, without its progress prints."""
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def category_index(categories: Iterable[dict]) -> dict[int, int]:
    """{COCO category id: class index 1..K}, in ascending id order (K = 80 on COCO)."""
    ids = sorted(int(c['id']) for c in categories)
    if len(set(ids)) != len(ids):
        raise ValueError('the annotation file lists a category id twice')
    return {category_id: index + 1 for index, category_id in enumerate(ids)}


def class_names(categories: Iterable[dict]) -> tuple[str, ...]:
    """Category names in class-index order (index 1 first)."""
    return tuple(c['name'] for c in sorted(categories, key=lambda c: int(c['id'])))


def image_stem(file_name: str) -> str:
    return Path(file_name).stem


def image_labels(coco) -> dict[str, np.ndarray]:
    """{image id: (K,) float32 multi-hot} for every image of the file, crowd annotations included;
    images without annotations get all zeros."""
    mapping = category_index(coco.loadCats(coco.getCatIds()))
    labels = {}
    for image in coco.loadImgs(coco.getImgIds()):
        label = np.zeros(len(mapping), np.float32)
        for ann in coco.imgToAnns.get(image['id'], []):
            label[mapping[int(ann['category_id'])] - 1] = 1.0
        labels[image_stem(image['file_name'])] = label
    return labels


def annotated_ids(coco) -> list[str]:
    """Ids of the images that have at least one annotation, in image-id order (the field's lists)."""
    images = coco.loadImgs(sorted(coco.getImgIds()))
    return [image_stem(image['file_name']) for image in images if coco.imgToAnns.get(image['id'])]


def class_mask(coco, image_id: int, mapping: dict[int, int]) -> np.ndarray:
    """(H, W) uint8 class map of one image (0 background, 1..K): non-crowd instances in file order,
    later over earlier; crowd regions left as background."""
    image = coco.imgs[image_id]
    mask = np.zeros((image['height'], image['width']), np.uint8)
    for ann in coco.imgToAnns.get(image_id, []):
        if ann.get('iscrowd', 0):
            continue
        mask[coco.annToMask(ann) == 1] = mapping[int(ann['category_id'])]
    return mask


def ann_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 0/1 mask of one annotation's segmentation (polygons, uncompressed or compressed RLE):
    pycocotools' `COCO.annToMask` without the COCO index, for worker processes that get one image's
    annotations (the same pycocotools.mask calls, so the same pixels)."""
    from pycocotools import mask as mask_util
    if isinstance(segmentation, list):                      # polygons: one RLE per part, merged
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation['counts'], list):          # uncompressed RLE
        rle = mask_util.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_util.decode(rle)


def instance_mask_of(annotations: Iterable[dict], height: int, width: int, void: int = 255) -> np.ndarray:
    """(H, W) uint8 instance map of one image for the instance metric, VOC's SegmentationObject layout:
    the k-th non-crowd annotation (in file order, later over earlier, as `class_mask`) is k, crowd regions
    are `void` (COCO's own evaluation ignores them too; they are background in the class mask), 0 elsewhere."""
    mask = np.zeros((height, width), np.uint8)
    crowd = np.zeros((height, width), bool)
    k = 0
    for ann in annotations:
        pixels = ann_to_mask(ann['segmentation'], height, width) == 1
        if ann.get('iscrowd', 0):
            crowd |= pixels
            continue
        k += 1
        if k >= void:
            break                                   # past 254 instances (none in COCO 2014, at most 93)
        mask[pixels] = k
    mask[crowd & (mask == 0)] = void
    return mask


def class_mask_of(annotations: Iterable[dict], height: int, width: int, mapping: dict[int, int]) -> np.ndarray:
    """`class_mask` from one image's annotation dicts (in file order) and its size."""
    mask = np.zeros((height, width), np.uint8)
    for ann in annotations:
        if ann.get('iscrowd', 0):
            continue
        mask[ann_to_mask(ann['segmentation'], height, width) == 1] = mapping[int(ann['category_id'])]
    return mask
