"""CDA training pairs: label union, fallback, visibility rule, repeatability, and the CDA schedule quirk."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from misc.cda import ObjectBank
from misc.config import Config
from step import make_object_bank
from step.train_cam import max_steps
from voc12 import dataloader
from voc12.cda_dataset import CDAClassificationDataset, choose_paste_class


@pytest.fixture(scope='module')
def bank(synthetic_voc, tmp_path_factory) -> ObjectBank:
    work = tmp_path_factory.mktemp('bank')
    cfg = Config(work_dir=work, voc12_root=synthetic_voc, cda_bank_source=synthetic_voc / 'SegmentationClass')
    make_object_bank.run(cfg)
    return ObjectBank.load(cfg.object_bank_dir)


@pytest.fixture(scope='module')
def ids_labels(synthetic_voc):
    ids = (synthetic_voc / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()
    return ids, dataloader.load_image_labels(synthetic_voc, ids)


def make(synthetic_voc, ids_labels, bank, **kw) -> CDAClassificationDataset:
    ids, labels = ids_labels
    return CDAClassificationDataset(ids, synthetic_voc, labels, bank, resize_long=(48, 80), crop_size=64, **kw)


def test_choose_paste_class_only_absent_classes_in_the_bank():
    rng = np.random.default_rng(0)
    label = np.zeros(20, np.float32)
    label[[1, 4]] = 1
    drawn = {choose_paste_class(label, [1, 3, 4, 7], rng) for _ in range(200)}
    assert drawn == {3, 7}
    label[[3, 7]] = 1
    assert choose_paste_class(label, [1, 3, 4, 7], rng) is None


def test_pasted_label_is_the_union(synthetic_voc, ids_labels, bank):
    dataset = make(synthetic_voc, ids_labels, bank, seed=1)
    for index in range(len(dataset)):
        item = dataset[index]
        label, aug = item['label'].numpy(), item['aug_label'].numpy()
        pasted = item['pasted_class']
        assert pasted >= 0 and label[pasted] == 0 and pasted in bank.classes
        expected = label.copy()
        expected[pasted] = 1
        np.testing.assert_array_equal(aug, expected)
        assert item['img'].shape == item['aug_img'].shape == (3, 64, 64)
        assert not torch.equal(item['img'], item['aug_img'])


def test_fallback_to_the_unpasted_image_when_no_class_is_available(synthetic_voc, ids_labels, bank, caplog):
    ids, labels = ids_labels
    full = {i: np.ones(20, np.float32) for i in ids}     # every class present: nothing to paste
    dataset = CDAClassificationDataset(ids, synthetic_voc, full, bank, (48, 80), 64, seed=0)
    with caplog.at_level('WARNING'):
        items = [dataset[i] for i in range(3)]
    for item in items:
        assert item['pasted_class'] == -1
        np.testing.assert_array_equal(item['aug_label'].numpy(), item['label'].numpy())
    import voc12.cda_dataset as module
    assert module._warned_no_class


def test_min_visible_drops_a_class_cropped_away(synthetic_voc, ids_labels, bank):
    always = make(synthetic_voc, ids_labels, bank, seed=2, min_visible=0.0)
    strict = make(synthetic_voc, ids_labels, bank, seed=2, min_visible=1.01)   # nothing can be that visible
    for index in range(4):
        a, s = always[index], strict[index]
        assert a['aug_label'][a['pasted_class']] == 1
        assert s['aug_label'][s['pasted_class']] == 0
        torch.testing.assert_close(a['aug_img'], s['aug_img'])   # same draws, only the label differs


def test_pasted_visible_is_the_share_that_min_visible_compares(synthetic_voc, ids_labels, bank):
    always = make(synthetic_voc, ids_labels, bank, seed=2, min_visible=0.0)
    shares = [always[index]['pasted_visible'] for index in range(6)]
    assert all(0.0 <= share <= 1.0 for share in shares) and len(set(shares)) > 1
    threshold = sorted(shares)[3]                        # some pairs above it, some below
    cut = make(synthetic_voc, ids_labels, bank, seed=2, min_visible=threshold)
    for index, share in enumerate(shares):
        item = cut[index]
        assert item['pasted_visible'] == share
        assert item['aug_label'][item['pasted_class']] == (1 if share >= threshold else 0)


def test_repeatable_with_a_seed_and_independent_of_workers(synthetic_voc, ids_labels, bank):
    def batches(num_workers, seed):
        dataset = make(synthetic_voc, ids_labels, bank, seed=seed)
        dataset.set_epoch(3)
        loader = DataLoader(dataset, batch_size=4, num_workers=num_workers, shuffle=False)
        return [(b['aug_img'], b['pasted_class']) for b in loader]
    a, b, c = batches(0, 7), batches(2, 7), batches(0, 8)
    for (img_a, cls_a), (img_b, cls_b) in zip(a, b):
        torch.testing.assert_close(img_a, img_b)
        assert torch.equal(cls_a, cls_b)
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(a, c))


def test_different_samples_get_different_pastes(synthetic_voc, ids_labels, bank):
    dataset = make(synthetic_voc, ids_labels, bank, seed=0)
    classes = [dataset[i]['pasted_class'] for i in range(len(dataset))]
    assert len(set(classes)) > 1
    dataset.set_epoch(1)
    assert [dataset[i]['pasted_class'] for i in range(len(dataset))] != classes


def test_paste_context_control(synthetic_voc, ids_labels, bank):
    from voc12.synthetic import USUAL_SCENE
    scenes = json.loads((synthetic_voc / 'scenes.json').read_text())
    usual = make(synthetic_voc, ids_labels, bank, seed=0, paste_context='usual')
    foreign = make(synthetic_voc, ids_labels, bank, seed=0, paste_context='foreign')
    ids = ids_labels[0]
    foreign_hits = [USUAL_SCENE[foreign[i]['pasted_class']] != scenes[ids[i]] for i in range(len(ids))]
    assert all(foreign_hits)
    usual_hits = [USUAL_SCENE[usual[i]['pasted_class']] == scenes[ids[i]] for i in range(len(ids))]
    assert sum(usual_hits) > len(ids) / 2


def test_cda_schedule_quirk_and_full():
    quirk = Config(stage='cda', cam_batch_size=16, cam_num_epoches=5, cda_schedule='quirk')
    full = Config(stage='cda', cam_batch_size=16, cam_num_epoches=5, cda_schedule='full')
    steps_per_epoch = 1000 // 8                     # each CDA step takes B/2 = 8 originals
    assert max_steps(quirk, 1000, steps_per_epoch) == (1000 // 16) * 5          # decay ends half-way
    assert max_steps(full, 1000, steps_per_epoch) == steps_per_epoch * 5
    assert max_steps(Config(cam_batch_size=16, cam_num_epoches=5), 1000, 1000 // 16) == (1000 // 16) * 5
