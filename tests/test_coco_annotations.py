"""COCO annotation conversion on a hand-made instances file: category mapping with id gaps, image-level
labels with crowd regions, the mask convention on overlapping instances, and the annotated-image list."""
from __future__ import annotations

import json

import numpy as np
import pytest

from coco14.annotations import (annotated_ids, category_index, class_mask, class_mask_of, class_names, image_labels,
                                instance_mask_of, load_coco)


def box_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def instances(tmp_path):
    categories = [{'id': 90, 'name': 'toothbrush', 'supercategory': 'indoor'},
                  {'id': 1, 'name': 'person', 'supercategory': 'person'},
                  {'id': 13, 'name': 'stop sign', 'supercategory': 'outdoor'}]
    images = [{'id': 9, 'file_name': 'COCO_train2014_000000000009.jpg', 'height': 10, 'width': 12},
              {'id': 25, 'file_name': 'COCO_train2014_000000000025.jpg', 'height': 8, 'width': 8},
              {'id': 30, 'file_name': 'COCO_train2014_000000000030.jpg', 'height': 6, 'width': 6}]
    crowd = np.zeros((8, 8), np.uint8)
    crowd[4:, 4:] = 1
    from pycocotools import mask as mask_util
    crowd_rle = mask_util.encode(np.asfortranarray(crowd))
    crowd_rle = {'size': crowd_rle['size'], 'counts': crowd_rle['counts'].decode()}
    annotations = [
        # image 9: a person box, then a stop sign overlapping its right half (painted later, wins)
        {'id': 1, 'image_id': 9, 'category_id': 1, 'iscrowd': 0, 'segmentation': box_polygon(0, 0, 8, 6),
         'area': 48, 'bbox': [0, 0, 8, 6]},
        {'id': 2, 'image_id': 9, 'category_id': 13, 'iscrowd': 0, 'segmentation': box_polygon(4, 2, 11, 9),
         'area': 49, 'bbox': [4, 2, 7, 7]},
        # image 25: a toothbrush and a crowd of people (crowd: in the label, background in the mask)
        {'id': 3, 'image_id': 25, 'category_id': 90, 'iscrowd': 0, 'segmentation': box_polygon(0, 0, 3, 3),
         'area': 9, 'bbox': [0, 0, 3, 3]},
        {'id': 4, 'image_id': 25, 'category_id': 1, 'iscrowd': 1, 'segmentation': crowd_rle,
         'area': 16, 'bbox': [4, 4, 4, 4]},
    ]                                                   # image 30: no annotation at all
    path = tmp_path / 'instances_train2014.json'
    path.write_text(json.dumps({'images': images, 'annotations': annotations, 'categories': categories}))
    return load_coco(path)


def test_category_ids_map_to_1_based_indices_in_ascending_order(instances):
    mapping = category_index(instances.loadCats(instances.getCatIds()))
    assert mapping == {1: 1, 13: 2, 90: 3}
    assert class_names(instances.dataset['categories']) == ('person', 'stop sign', 'toothbrush')
    with pytest.raises(ValueError):
        category_index([{'id': 3}, {'id': 3}])


def test_image_labels_include_crowd_regions_and_images_without_annotations(instances):
    labels = image_labels(instances)
    assert labels['COCO_train2014_000000000009'].tolist() == [1, 1, 0]
    assert labels['COCO_train2014_000000000025'].tolist() == [1, 0, 1]     # the crowd's person counts
    assert labels['COCO_train2014_000000000030'].tolist() == [0, 0, 0]
    assert labels['COCO_train2014_000000000009'].dtype == np.float32


def test_lists_hold_the_annotated_images_only(instances):
    assert annotated_ids(instances) == ['COCO_train2014_000000000009', 'COCO_train2014_000000000025']


def test_masks_paint_instances_in_file_order_with_crowd_as_background(instances):
    mapping = category_index(instances.loadCats(instances.getCatIds()))
    mask = class_mask(instances, 9, mapping)
    assert mask.shape == (10, 12) and mask.dtype == np.uint8
    person_only = instances.annToMask(instances.anns[1]).astype(bool) & ~instances.annToMask(instances.anns[2]).astype(bool)
    assert (mask[person_only] == 1).all() and person_only.any()
    assert (mask[instances.annToMask(instances.anns[2]) == 1] == 2).all()      # the later instance wins
    assert mask[0, 11] == 0
    mask25 = class_mask(instances, 25, mapping)
    assert (mask25[:3, :3] == 3).all()
    assert (mask25[4:, 4:] == 0).all()                                          # crowd: background
    assert class_mask(instances, 30, mapping).tolist() == np.zeros((6, 6), int).tolist()


def test_the_workers_masks_equal_annToMasks_and_instances_void_the_crowd(instances):
    """The view's workers get one image's annotations, not the index: same pixels as `class_mask`
    (polygons, crowd RLE, overlap); the instance map numbers non-crowd instances in file order, crowd 255."""
    mapping = category_index(instances.loadCats(instances.getCatIds()))
    for image_id in (9, 25, 30):
        image = instances.imgs[image_id]
        anns = instances.imgToAnns.get(image_id, [])
        assert np.array_equal(class_mask_of(anns, image['height'], image['width'], mapping),
                              class_mask(instances, image_id, mapping))
    objects = instance_mask_of(instances.imgToAnns[9], 10, 12)
    assert (objects[instances.annToMask(instances.anns[2]) == 1] == 2).all() and (objects == 1).any()
    objects25 = instance_mask_of(instances.imgToAnns[25], 8, 8)
    assert (objects25[:3, :3] == 1).all() and (objects25[4:, 4:] == 255).all()
