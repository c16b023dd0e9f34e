"""Object bank: the single-class / area filter, the crop, and the driver on a tiny VOC-format folder."""
from __future__ import annotations

import dataclasses
import importlib
import json

import numpy as np
import pytest

from misc.cda import ObjectBank, mask_bbox
from misc.config import Config
from misc.imutils import BadInputError, read_label_png, read_rgb, save_label_png, save_rgb
from step import make_object_bank
from step.make_object_bank import extract_object
from voc12 import dataloader
from voc12.classes import CAT_LIST
from voc12.synthetic import generate


def _image(height: int = 10, width: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _mask_with(n_pixels: int, label: int = 5, height: int = 10, width: int = 10) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask.flat[:n_pixels] = label
    return mask


# ----------------------------------------------------------------------------- the filter

def test_one_class_kept():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 3:8] = 12                              # 20 px of 100: ratio 0.2
    found = extract_object(_image(), mask)
    assert found is not None
    cls, crop, crop_mask = found
    assert cls == 11
    assert crop.dtype == np.uint8 and crop_mask.dtype == bool


def test_two_classes_rejected():
    mask = np.zeros((10, 10), np.uint8)
    mask[0:3, 0:5] = 3
    mask[5:8, 0:5] = 7
    assert extract_object(_image(), mask) is None


def test_all_background_skipped():
    assert extract_object(_image(), np.zeros((10, 10), np.uint8)) is None


def test_only_ignore_skipped():
    assert extract_object(_image(), np.full((10, 10), 255, np.uint8)) is None


@pytest.mark.parametrize('n_pixels, kept', [(9, False), (10, True), (40, True), (70, True), (71, False)])
def test_ratio_bounds(n_pixels, kept):
    found = extract_object(_image(), _mask_with(n_pixels), min_fg_ratio=0.1, max_fg_ratio=0.7)
    assert (found is not None) == kept


def test_ratio_bounds_follow_arguments():
    mask = _mask_with(30)
    assert extract_object(_image(), mask, 0.1, 0.7) is not None
    assert extract_object(_image(), mask, 0.4, 0.7) is None
    assert extract_object(_image(), mask, 0.1, 0.2) is None


def test_bbox_crop_exact():
    image = _image(20, 30, seed=3)
    mask = np.zeros((20, 30), np.uint8)
    mask[4:11, 7:19] = 1
    mask[4, 7] = 0                                   # a hole at the corner does not shrink the box
    mask[15, 25] = 1                                 # a detached pixel grows it
    cls, crop, crop_mask = extract_object(image, mask, 0.0, 1.0)
    assert cls == 0
    np.testing.assert_array_equal(crop, image[4:16, 7:26])
    np.testing.assert_array_equal(crop_mask, mask[4:16, 7:26] == 1)


def test_ignore_pixels_are_not_a_class():
    mask = np.full((10, 10), 255, np.uint8)
    mask[0:2] = 0
    mask[3:6, 2:7] = 4                               # 15 px of class 4, the rest ignore or background
    found = extract_object(_image(), mask)
    assert found is not None
    cls, crop, crop_mask = found
    assert cls == 3 and crop.shape == (3, 5, 3) and crop_mask.all()


def test_ignore_pixels_not_counted_as_area():
    mask = np.full((10, 10), 255, np.uint8)
    mask.flat[:5] = 9                                # 5 % foreground, 95 % ignore: below 0.1
    assert extract_object(_image(), mask) is None


# ----------------------------------------------------------------------------- the driver

def _mini_dataset(tmp_path):
    """Five VOC-format images with label maps: three single-class (two dogs, one car), one with two
    classes, one all background. Returns (Config, {id: (image as read back, label)})."""
    voc = tmp_path / 'voc'
    labels_dir = tmp_path / 'labels'
    rng = np.random.default_rng(0)
    specs = {
        'img_a': [(12, (5, 20, 10, 30))],            # dog
        'img_b': [(12, (0, 16, 0, 12))],             # dog at the corner
        'img_c': [(7, (10, 30, 20, 40))],            # car
        'img_d': [(7, (0, 10, 0, 10)), (15, (20, 30, 20, 30))],
        'img_e': [],
    }
    truth = {}
    for image_id, boxes in specs.items():
        image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
        label = np.zeros((32, 48), np.uint8)
        for value, (top, bottom, left, right) in boxes:
            label[top:bottom, left:right] = value
        save_rgb(voc / 'JPEGImages' / f'{image_id}.jpg', image)
        save_label_png(labels_dir / f'{image_id}.png', label)
        truth[image_id] = (read_rgb(voc / 'JPEGImages' / f'{image_id}.jpg'), label)
    (tmp_path / 'train.txt').write_text('\n'.join(specs) + '\n')
    cfg = Config(work_dir=tmp_path / 'work', voc12_root=voc, cda_bank_source=labels_dir,
                 train_list=str(tmp_path / 'train.txt'))
    return cfg, truth


def test_driver_writes_index_and_counts(tmp_path):
    cfg, truth = _mini_dataset(tmp_path)
    result = make_object_bank.run(cfg)
    assert result['objects'] == 3 and result['masks_scanned'] == 5
    assert result['counts']['dog'] == 2 and result['counts']['car'] == 1

    bank_dir = cfg.object_bank_dir
    counts = json.loads((bank_dir / 'counts.json').read_text())
    assert counts == {'masks_scanned': 5, 'objects': 3, 'per_class': result['counts']}
    assert set(counts['per_class']) == set(CAT_LIST)
    index = json.loads((bank_dir / 'index.json').read_text())
    assert [e['source'] for e in index] == ['img_a', 'img_b', 'img_c']
    assert index[0] == {'class': 11, 'name': 'dog', 'image': 'dog/img_a.png', 'mask': 'dog/img_a_mask.png',
                        'source': 'img_a'}

    bank = ObjectBank.load(bank_dir)
    assert len(bank) == 3 and bank.classes == [6, 11]
    assert bank.count(11) == 2 and bank.count(6) == 1 and bank.count(0) == 0
    image, mask = bank.sample(6, np.random.default_rng(0))
    np.testing.assert_array_equal(image, truth['img_c'][0][10:30, 20:40])
    assert mask.dtype == bool and mask.shape == (20, 20) and mask.all()
    seen = set()
    rng = np.random.default_rng(1)
    for _ in range(20):
        image, mask = bank.sample(11, rng)
        seen.add(image.shape[:2])
        source = 'img_a' if image.shape[:2] == (15, 20) else 'img_b'
        top, left = (5, 10) if source == 'img_a' else (0, 0)
        np.testing.assert_array_equal(image, truth[source][0][top:top + image.shape[0], left:left + image.shape[1]])
    assert seen == {(15, 20), (16, 12)}


def test_driver_reuses_then_rebuilds(tmp_path):
    cfg, _ = _mini_dataset(tmp_path)
    make_object_bank.run(cfg)
    stale = cfg.object_bank_dir / 'dog' / 'stale.png'
    stale.write_bytes(b'')
    assert make_object_bank.run(cfg)['reused'] is True
    assert stale.exists()

    # Rebuild from a source with only the car: the dogs and the stale file go.
    for image_id in ('img_a', 'img_b'):
        (cfg.cda_bank_source / f'{image_id}.png').unlink()
    result = make_object_bank.run(dataclasses.replace(cfg, overwrite=True))
    assert result['objects'] == 1 and result['counts']['dog'] == 0
    assert not (cfg.object_bank_dir / 'dog').exists()
    assert ObjectBank.load(cfg.object_bank_dir).classes == [6]


def test_driver_default_source_makes_the_train_lists_pseudo_masks(tmp_path):
    cfg, _ = _mini_dataset(tmp_path)
    cfg = dataclasses.replace(cfg, cda_bank_source=None)
    # it asks make_sem_seg for the train list's masks, which needs the CAMs of those images
    with pytest.raises(BadInputError, match='make_cam'):
        make_object_bank.run(cfg)


def test_driver_reads_only_the_train_lists_masks(tmp_path):
    cfg, _ = _mini_dataset(tmp_path)
    stray = np.zeros((32, 48), np.uint8)
    stray[0:10, 0:10] = 3
    save_label_png(cfg.cda_bank_source / 'stray.png', stray)        # not in the list: never read
    save_rgb(cfg.dataset_root / 'JPEGImages' / 'stray.jpg', _image(32, 48))
    (cfg.cda_bank_source / 'img_c.png').unlink()                    # in the list, but no mask: skipped
    result = make_object_bank.run(cfg)
    assert result['masks_scanned'] == 4 and result['objects'] == 2
    assert result['counts']['bird'] == 0 and result['counts']['car'] == 0


def test_empty_bank_names_the_flags_to_change(tmp_path):
    cfg, _ = _mini_dataset(tmp_path)
    with pytest.raises(BadInputError, match='--cda_min_fg_ratio/--cda_max_fg_ratio.*--cda_bank_source'):
        make_object_bank.run(dataclasses.replace(cfg, cda_min_fg_ratio=0.9, cda_max_fg_ratio=1.0))


def test_driver_missing_image_and_size_mismatch(tmp_path):
    cfg, _ = _mini_dataset(tmp_path)
    save_label_png(cfg.cda_bank_source / 'img_f.png', np.zeros((32, 48), np.uint8))
    (tmp_path / 'list_f.txt').write_text('img_a\nimg_f\n')
    cfg = dataclasses.replace(cfg, train_list=str(tmp_path / 'list_f.txt'))
    with pytest.raises(BadInputError, match='img_f.jpg'):
        make_object_bank.run(cfg)
    save_rgb(cfg.dataset_root / 'JPEGImages' / 'img_f.jpg', np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(BadInputError, match='differs'):
        make_object_bank.run(cfg)


def test_load_missing_or_empty_bank(tmp_path):
    with pytest.raises(BadInputError, match='make_object_bank'):
        ObjectBank.load(tmp_path / 'nothing')
    (tmp_path / 'index.json').write_text('[]')
    with pytest.raises(BadInputError, match='widen --cda_min_fg_ratio'):
        ObjectBank.load(tmp_path)


def test_oracle_bank_of_demo_seeds_is_cut_from_the_ground_truth(tmp_path):
    """benchmarks/demo_seeds.py's oracle arm: the bank holds exactly the train list's ground-truth objects
    that pass the filter, each with the ground truth's class and mask (the shift split is never read)."""
    demo_seeds = importlib.import_module('benchmarks.demo_seeds')
    work_dir = tmp_path / 'work'
    root = generate(work_dir / 'synthetic_voc', n_train=24, n_val=4, size=64, seed=3, n_shift=4)
    source = demo_seeds.oracle_bank_source(work_dir)
    assert source == root / 'SegmentationClass'
    cfg = Config(work_dir=work_dir, cda_bank_source=source)
    train_ids = dataloader.resolve_list(cfg.train_list, 'train', root, None)

    result = make_object_bank.run(cfg)

    expected = {}
    for image_id in train_ids:
        label = make_object_bank.single_class(read_label_png(source / f'{image_id}.png'))
        if label is not None:
            expected[image_id] = label - 1
    assert result['masks_scanned'] == len(train_ids) == 24
    assert result['objects'] == len(expected) > 0
    index = json.loads((cfg.object_bank_dir / 'index.json').read_text())
    assert {entry['source']: entry['class'] for entry in index} == expected
    for entry in index:
        gt = read_label_png(source / f'{entry["source"]}.png') == entry['class'] + 1
        top, bottom, left, right = mask_bbox(gt)
        saved = read_label_png(cfg.object_bank_dir / entry['mask']) > 0
        np.testing.assert_array_equal(saved, gt[top:bottom, left:right])
        image = read_rgb(cfg.object_bank_dir / entry['image'])
        np.testing.assert_array_equal(image, read_rgb(root / 'JPEGImages' / f'{entry["source"]}.jpg')[top:bottom,
                                                                                                        left:right])
