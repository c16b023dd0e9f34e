"""Instance pseudo masks: centroids and clusters, detections, the VOC instance AP, the COCO export, and the
synthetic dataset's SegmentationObject masks."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from misc import coco
from misc.imutils import read_label_png, save_rgb
from misc.instance_metrics import InstanceAP, average_precision, evaluate_instances
from step.eval_ins_seg import load_gt_instances
from step.make_ins_seg_labels import (cluster_centroids, detect_instances, find_centroids_with_refinement,
                                      instances_from_irn)
from voc12.classes import CAT_LIST, IGNORE, VOC12
from voc12.synthetic import SHIFT_ID_PREFIX, generate


def box(shape, y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


# ----------------------------------------------------------------------------- centroids and clusters

def field_towards(points: list[tuple[int, int]], height: int, width: int, rate: float = 0.5) -> np.ndarray:
    """(2, h, w) float32 displacement: each pixel points part of the way to the nearest of `points`."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dists = np.stack([(yy - py) ** 2 + (xx - px) ** 2 for py, px in points])
    nearest = np.asarray(points, np.float32)[dists.argmin(0)]          # (h, w, 2)
    return np.stack([(nearest[..., 0] - yy) * rate, (nearest[..., 1] - xx) * rate]).astype(np.float32)


def test_centroids_of_a_field_pointing_to_one_point():
    centroids = find_centroids_with_refinement(field_towards([(7, 11)], 16, 20))
    assert centroids.shape == (2, 16, 20) and centroids.dtype == np.int32
    assert np.all(centroids[0] == 7) and np.all(centroids[1] == 11)


def test_zero_field_leaves_every_pixel_at_home_and_clips_outside_the_map():
    still = find_centroids_with_refinement(np.zeros((2, 5, 6), np.float32), iterations=10)
    assert np.array_equal(still, np.stack(np.mgrid[0:5, 0:6]))
    away = find_centroids_with_refinement(np.full((2, 5, 6), 3.0, np.float32), iterations=10)
    assert np.all(away[0] == 4) and np.all(away[1] == 5)


def test_clusters_split_two_fields_into_two_instances():
    displacement = field_towards([(8, 5), (8, 26)], 16, 32)
    instances = cluster_centroids(find_centroids_with_refinement(displacement), displacement)
    assert instances.dtype == bool and instances.shape == (2, 16, 32)
    assert np.all(instances.sum(0) == 1)                                # one-hot
    assert instances[0][:, :15].all() and instances[1][:, 17:].all()   # left half, then right half


# ----------------------------------------------------------------------------- detections

def test_detect_instances_cuts_pieces_and_zeroes_fragments():
    label = np.zeros((10, 10), np.int64)
    label[0:4, 0:4] = 1            # map 0: one 16-pixel piece
    label[6:10, 0:4] = 2           # map 1: a 16-pixel piece and a 1-pixel fragment
    label[9, 9] = 2
    scores = np.zeros((2, 10, 10), np.float32)
    scores[0, 1, 1], scores[1, 7, 1], scores[1, 9, 9] = 0.9, 0.6, 0.8
    found = detect_instances(scores, label, np.array([4, 14]), min_fragment=2)
    assert found['classes'].tolist() == [4, 14, 14]
    assert found['scores'].tolist() == pytest.approx([0.9, 0.6, 0.0])
    assert (found['instances'] == 1).sum() == 16 and (found['instances'] == 3).sum() == 1
    assert found['instances'].dtype == np.uint16


def test_instances_from_irn_of_two_objects():
    displacement = torch.from_numpy(field_towards([(4, 3), (4, 12)], 8, 16))
    cams = torch.zeros(1, 8, 16)
    cams[0, 2:7, 1:6] = 1.0
    cams[0, 2:7, 10:15] = 0.8
    edge = torch.zeros(8, 16)
    edge[:, 7:9] = 1.0                                      # a boundary between the two
    found = instances_from_irn(cams, np.array([2]), edge, displacement, (32, 64), beta=10, exp_times=2)
    assert found['instances'].shape == (32, 64)
    big = found['scores'] > 0
    assert found['classes'][big].tolist() == [2, 2]
    left, right = (found['instances'] == i + 1 for i in np.flatnonzero(big))
    assert np.nonzero(left)[1].max() < 32 <= np.nonzero(right)[1].min()


# ----------------------------------------------------------------------------- AP

SHAPE = (20, 20)
A, B = box(SHAPE, 0, 8, 0, 8), box(SHAPE, 10, 18, 10, 18)


def test_perfect_prediction_gives_one():
    result = evaluate_instances([np.stack([A, B])], [np.array([3, 3])], [np.array([0.9, 0.5])],
                                [np.stack([A, B])], [np.array([3, 3])])
    assert result['ap'][3] == 1.0 and result['map'] == 1.0
    assert np.isnan(result['ap'][0])                        # no ground truth: not in the mean


def test_missed_instance_halves_recall():
    result = evaluate_instances([A[None]], [np.array([3])], [np.array([0.9])], [np.stack([A, B])], [np.array([3, 3])])
    assert result['map'] == pytest.approx(0.5)


def test_duplicate_detection_is_a_false_positive():
    # hits by score: A (TP), A again (FP: already matched), B (TP): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    result = evaluate_instances([np.stack([A, A, B])], [np.array([3, 3, 3])], [np.array([0.9, 0.8, 0.7])],
                                [np.stack([A, B])], [np.array([3, 3])])
    assert result['map'] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_wrong_class_and_low_overlap_score_zero():
    wrong_class = evaluate_instances([A[None]], [np.array([5])], [np.array([0.9])], [A[None]], [np.array([3])])
    assert wrong_class['ap'][3] == 0.0 and np.isnan(wrong_class['ap'][5]) and wrong_class['map'] == 0.0
    shifted = box(SHAPE, 4, 12, 4, 12)                      # IoU 16 / 112 with A
    assert evaluate_instances([shifted[None]], [np.array([3])], [np.array([0.9])], [A[None]],
                              [np.array([3])])['map'] == 0.0


def test_void_pixels_belong_to_no_instance():
    inner = box(SHAPE, 2, 6, 2, 6)                          # 16 ground-truth pixels
    void = box(SHAPE, 1, 7, 1, 7) & ~inner                  # a 20-pixel void ring around it
    pred = box(SHAPE, 1, 7, 1, 7)                           # covers the ring too: IoU 16 / 36
    args = ([pred[None]], [np.array([0])], [np.array([1.0])], [inner[None]], [np.array([0])])
    assert evaluate_instances(*args, voids=[void])['map'] == 0.0     # chainercv: void counts against the prediction
    assert evaluate_instances(*args, voids=[void], ignore_void=True)['map'] == 1.0


def test_several_thresholds_in_one_pass():
    half = box(SHAPE, 0, 8, 0, 5)                           # IoU 40 / 64 = 0.625 with A
    ap = InstanceAP(20, (0.25, 0.5, 0.75))
    ap.update(half[None], [1], [0.5], A[None], [1])
    result = ap.compute()
    assert [result[t]['map'] for t in (0.25, 0.5, 0.75)] == [1.0, 1.0, 0.0]


def test_average_precision_area():
    assert average_precision(np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == pytest.approx(5 / 6)
    assert average_precision(np.array([]), np.array([])) == 0.0


# ----------------------------------------------------------------------------- COCO export

def test_coco_export_reads_back_with_pycocotools(tmp_path):
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    rng = np.random.default_rng(0)
    written = {}
    for image_id, n in (('2007_000001', 3), ('2007_000002', 0), ('2007_000003', 2)):
        masks = rng.random((n, 24, 32)) < 0.3
        written[image_id] = {'masks': masks, 'classes': rng.integers(0, 20, n), 'scores': rng.random(n) + 0.01}
    written['2007_000003']['scores'][1] = 0.0              # a fragment: left out of the export
    payload = coco.export(list(written), written.__getitem__, VOC12)
    path = tmp_path / 'ann.json'
    coco.write(path, payload)
    api = COCO(str(path))
    assert [c['name'] for c in api.loadCats(api.getCatIds())] == list(CAT_LIST)
    assert api.getCatIds() == list(range(1, 21))
    assert len(api.getAnnIds()) == 4
    for image in api.loadImgs(api.getImgIds()):
        image_id = image['file_name'][:-len('.jpg')]
        assert (image['height'], image['width']) == (24, 32)
        anns = api.loadAnns(api.getAnnIds(imgIds=image['id']))
        keep = written[image_id]['scores'] > 0
        expected = written[image_id]['masks'][keep]
        assert len(anns) == len(expected)
        for ann, mask in zip(anns, expected):
            assert isinstance(ann['segmentation']['counts'], str) and ann['iscrowd'] == 0
            assert np.array_equal(api.annToMask(ann).astype(bool), mask)
            ys, xs = np.nonzero(mask)
            assert ann['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann['area'] == mask.sum()
    raw = json.loads(path.read_text())
    assert all(set(a) >= {'id', 'image_id', 'category_id', 'segmentation', 'area', 'bbox', 'score', 'iscrowd'}
               for a in raw['annotations'])
    assert mask_util.decode(raw['annotations'][0]['segmentation']).shape == (24, 32)


def test_coco_export_loads_in_torchvision(tmp_path):
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
    masks = np.stack([box((24, 32), 2, 10, 3, 12), box((24, 32), 12, 20, 15, 30)])
    save_rgb(tmp_path / 'img' / 'a.jpg', np.zeros((24, 32, 3), np.uint8))
    payload = coco.export(['a'], lambda _: {'masks': masks, 'classes': np.array([14, 11]),
                                            'scores': np.array([0.9, 0.4])}, VOC12)
    coco.write(tmp_path / 'ann.json', payload)
    dataset = wrap_dataset_for_transforms_v2(CocoDetection(str(tmp_path / 'img'), str(tmp_path / 'ann.json')),
                                             target_keys=('boxes', 'labels', 'masks'))
    _, target = dataset[0]
    assert target['labels'].tolist() == [15, 12]
    assert np.array_equal(target['masks'].numpy().astype(bool), masks)
    assert target['boxes'][0].tolist() == [3, 2, 12, 10]   # XYXY


# ----------------------------------------------------------------------------- synthetic SegmentationObject

# sha256 of the images, class masks and XMLs of generate(n_train=16, n_val=8, size=64, seed=0) and of
# generate(n_train=6, n_val=3, size=48, context_bias=0.5, seed=3), computed before the generator wrote
# SegmentationObject: adding the instance masks must not change them.
HASHES = {(16, 8, 64, 0.85, 0): '56a13ced2d07c5eddba06abed93da89928c133e2dc08df14146ff12617b24a22',
          (6, 3, 48, 0.5, 3): 'b3a2c624483ea86238a0ed93ad154fe0cfda855c4e12e2b8894463492a6f15ed'}


def dataset_hash(root: Path) -> str:
    """Over the train/val images only (the context-shift split came later, with its own ids)."""
    digest = hashlib.sha256()
    for sub in ('JPEGImages', 'SegmentationClass', 'Annotations'):
        for path in sorted((root / sub).iterdir()):
            if path.name.startswith(SHIFT_ID_PREFIX):
                continue
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_instance_masks_leave_images_and_class_masks_unchanged(synthetic_voc, tmp_path):
    assert dataset_hash(synthetic_voc) == HASHES[16, 8, 64, 0.85, 0]
    other = generate(tmp_path / 'other', n_train=6, n_val=3, size=48, context_bias=0.5, seed=3)
    assert dataset_hash(other) == HASHES[6, 3, 48, 0.5, 3]


def test_instance_masks_agree_with_class_masks_and_xml(synthetic_voc):
    import xml.etree.ElementTree as ET
    for image_id in (synthetic_voc / 'ImageSets' / 'Segmentation' / 'trainval.txt').read_text().split():
        objects = read_label_png(synthetic_voc / 'SegmentationObject' / f'{image_id}.png')
        label = read_label_png(synthetic_voc / 'SegmentationClass' / f'{image_id}.png')
        assert np.array_equal(objects == IGNORE, label == IGNORE)
        assert np.array_equal(objects == 0, label == 0)
        names = [o.find('name').text for o in ET.parse(synthetic_voc / 'Annotations' / f'{image_id}.xml').getroot()
                 .findall('object')]
        masks, classes, void = load_gt_instances(synthetic_voc, image_id)
        assert sorted(set(np.unique(objects)) - {0, IGNORE}) == list(range(1, len(names) + 1))
        assert [CAT_LIST[c] for c in classes] == names       # instance k is the k-th <object>
        for mask, cls in zip(masks, classes):
            assert np.all(label[mask] == cls + 1)


def test_older_dataset_gets_its_instance_masks(tmp_path):
    root = generate(tmp_path / 'old', n_train=3, n_val=1, size=32, seed=1)
    first = {p.name: p.read_bytes() for p in (root / 'SegmentationObject').iterdir()}
    for path in (root / 'SegmentationObject').iterdir():
        path.unlink()
    generate(root, n_train=3, n_val=1, size=32, seed=1)
    assert {p.name: p.read_bytes() for p in (root / 'SegmentationObject').iterdir()} == first


def test_eval_ins_seg_skips_without_instance_ground_truth(tmp_path, caplog):
    import logging
    import shutil
    from step.registry import parse_config
    from step import eval_ins_seg
    root = generate(tmp_path / 'voc', n_train=2, n_val=1, size=32, seed=0)
    shutil.rmtree(root / 'SegmentationObject')
    cfg = parse_config(['--profile', 'smoke', '--voc12_root', str(root), '--work_dir', str(tmp_path / 'work')])
    with caplog.at_level(logging.INFO, logger='step.eval_ins_seg'):
        assert eval_ins_seg.run(cfg) == {'skipped': 'no SegmentationObject'}
    assert 'no SegmentationObject/ ground truth' in caplog.text
    assert not (cfg.metrics_dir / 'eval_ins_seg.json').exists()
