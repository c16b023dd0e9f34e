"""--dataset coco14: the COCO loader on the synthetic COCO (read as the real files are), its one-line errors,
every method's smoke run on it, and VOC left as it was (fingerprint digests recorded before --dataset)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from coco14 import annotations as coco_ann
from coco14 import dataset as coco_dataset
from coco14 import synthetic as coco_synthetic
from coco14.synthetic import CATEGORIES, coco_classes, drawn_categories, generate
from misc import imutils

DIGESTS = Path(__file__).parent / 'data' / 'voc_fingerprint_digests.json'


@pytest.fixture(scope='module')
def synthetic_coco(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp('synthetic_coco'), n_train=12, n_val=6, size=64, seed=0)


def test_voc_fingerprint_digests_are_those_recorded_before_the_dataset_flag():
    """Every (method, slot, stage) fingerprint of a VOC smoke and paper config, from an empty work dir:
    the digests recorded at commit 5f6fa37 (before --dataset), so existing VOC work dirs are not redone."""
    from misc.config import with_stage
    from step import pipeline, registry
    configs = {'smoke': ['--profile', 'smoke', '--work_dir', '/tmp/fp_probe_never_made'],
               'paper': ['--profile', 'paper', '--voc12_root', '/tmp/fp_probe_voc', '--work_dir',
                         '/tmp/fp_probe_never_made']}
    found = {}
    for name, argv in configs.items():
        for method in registry.METHODS:
            cfg = registry.parse_config(argv + ['--method', method])
            assert cfg.dataset == 'voc12'
            for stage in ('', 'cda'):
                for slot in registry.PASS_STEPS + tuple(registry.SHARED):
                    if registry.step_module(method, slot) is not None:
                        found[f'{name}/{method}/{stage or "base"}/{slot}'] = \
                            pipeline.fingerprint_of(with_stage(cfg, stage), slot)['digest']
    recorded = json.loads(DIGESTS.read_text())
    assert {key: found.get(key) for key in recorded} == recorded
    new_slots = {key.rsplit('/', 1)[1] for key in set(found) - set(recorded)}
    assert new_slots <= {'train_seg', 'make_seg', 'eval_seg'}          # slots added since (no earlier record)


def test_coco_fingerprints_name_the_dataset(tmp_path):
    from step import pipeline, registry
    voc = registry.parse_config(['--profile', 'smoke', '--work_dir', str(tmp_path)])
    coco = registry.parse_config(['--profile', 'smoke', '--work_dir', str(tmp_path), '--dataset', 'coco14'])
    fp = pipeline.fingerprint_of(coco, 'train_cam')
    assert fp['settings']['dataset'] == 'coco14' and 'coco_root' in fp['settings']
    assert 'dataset' not in pipeline.fingerprint_of(voc, 'train_cam')['settings']


def test_coco_settings_are_irnets_coco_values():
    """ReCAM's run_sample_coco.py: CAM 5 epochs, batch 16, lr 0.1, crop 512; IRN 3 epochs, batch 32, crop
    512; beta 10, 2^8 steps; thresholds 0.15 / 0.30 / 0.05 / 0.25."""
    from step import registry
    cfg = registry.parse_config(['--dataset', 'coco14', '--coco_root', '/tmp/none', '--work_dir', '/tmp/none'])
    assert cfg.profile == 'paper'
    assert (cfg.cam_num_epoches, cfg.cam_batch_size, cfg.cam_learning_rate, cfg.cam_crop_size) == (5, 16, 0.1, 512)
    assert (cfg.irn_num_epoches, cfg.irn_batch_size, cfg.irn_crop_size) == (3, 32, 512)
    assert (cfg.beta, cfg.exp_times) == (10, 8)
    assert (cfg.cam_eval_thres, cfg.conf_fg_thres, cfg.conf_bg_thres, cfg.sem_seg_bg_thres) == (0.15, 0.30, 0.05, 0.25)


def test_synthetic_coco_has_80_classes_each_drawn_apart_with_a_usual_scene():
    classes = coco_classes()
    assert classes.count == 80 == len(CATEGORIES)
    assert len(set(zip(classes.shape, classes.texture, classes.hue))) == 80
    assert len(set(classes.usual_scene)) == 6
    assert [c[0] for c in CATEGORIES] == sorted(c[0] for c in CATEGORIES) and CATEGORIES[-1][0] == 90


def test_a_synthetic_coco_of_40_classes_draws_every_other_category_in_all_six_scenes(synthetic_coco, tmp_path):
    drawn = drawn_categories(40)
    assert drawn == tuple(range(0, 80, 2))
    classes, full = coco_classes(drawn), coco_classes()
    assert classes.count == 40 and len(set(classes.usual_scene)) == 6
    for k, c in enumerate(drawn):       # a category is drawn alike whatever else is drawn
        assert (classes.names[k], classes.shape[k], classes.texture[k], classes.hue[k]) == \
            (full.names[c], full.shape[c], full.texture[c], full.hue[c])
    assert all(classes.names[p] in dict(coco_synthetic._COMPANIONS).get(classes.names[k], ())
               for k, partners in classes.co_occur.items() for p in partners)
    with pytest.raises(ValueError):
        drawn_categories(0)
    root = generate(tmp_path / 'forty', n_train=30, n_val=6, size=64, seed=0, n_classes=40)
    train = json.loads((root / 'annotations' / 'instances_train2014.json').read_text())
    assert len(train['categories']) == 80
    used = {a['category_id'] for a in train['annotations']}
    assert used <= {CATEGORIES[c][0] for c in drawn} and len(used) > 10
    # the default (80 classes) writes what it wrote before the option existed
    assert 'n_classes' not in json.loads((synthetic_coco / 'synthetic.json').read_text())


def test_synthetic_n_classes_is_for_the_synthetic_coco_only():
    from step import registry
    demo = registry.parse_config(['--dataset', 'coco14', '--profile', 'demo', '--work_dir', '/tmp/none'])
    assert demo.synthetic_n_classes == 40 and demo.cam_learning_rate == 0.4
    assert registry.parse_config(['--profile', 'demo', '--work_dir', '/tmp/none']).cam_learning_rate == 0.1
    with pytest.raises(SystemExit):
        registry.parse_config(['--n_classes', '10', '--work_dir', '/tmp/none'])
    with pytest.raises(SystemExit):
        registry.parse_config(['--dataset', 'coco14', '--n_classes', '81', '--work_dir', '/tmp/none'])


def test_the_view_reads_the_synthetic_coco_as_pycocotools_does(synthetic_coco, tmp_path):
    view, cache = tmp_path / 'coco14', tmp_path / 'cache'
    info = coco_dataset.prepare(synthetic_coco, view, cache)
    assert info.num_classes == 80 and info.num_labels == 81 and info.class_names[0] == 'person'
    assert info.category_id(79) == 90 and info.category_id(11) == 13          # ids keep COCO's gaps
    coco = coco_ann.load_coco(synthetic_coco / 'annotations' / 'instances_train2014.json')
    ids = (view / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()
    assert ids == coco_ann.annotated_ids(coco) and ids[0] == 'COCO_train2014_000000000001'
    with np.load(cache / 'cls_labels.npz') as stored:
        labels = dict(zip(stored['ids'].tolist(), stored['labels']))
    mapping = coco_ann.category_index(coco.loadCats(coco.getCatIds()))
    for image in coco.loadImgs(coco.getImgIds()):
        stem = coco_ann.image_stem(image['file_name'])
        assert (view / 'JPEGImages' / f'{stem}.jpg').resolve() == (synthetic_coco / 'train2014' / image['file_name'])
        mask = imutils.read_label_png(view / 'SegmentationClass' / f'{stem}.png')
        assert np.array_equal(mask, coco_ann.class_mask(coco, image['id'], mapping))    # annToMask's pixels
        present = np.unique(mask[mask > 0]) - 1
        assert np.array_equal(np.flatnonzero(labels[stem]), present)
    # made once: a second call finds the view up to date and rewrites nothing
    before = (view / 'view.json').stat().st_mtime_ns
    coco_dataset.prepare(synthetic_coco, view, cache)
    assert (view / 'view.json').stat().st_mtime_ns == before


def test_a_folder_without_the_annotations_gets_one_line(synthetic_coco, tmp_path, capsys):
    import run_sample
    broken = tmp_path / 'coco'
    shutil.copytree(synthetic_coco / 'train2014', broken / 'train2014')
    (broken / 'val2014').mkdir()
    code = run_sample.main(['--dataset', 'coco14', '--coco_root', str(broken), '--work_dir', str(tmp_path / 'w')])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert 'annotations/instances_train2014.json' in err[0] and 'annotations/instances_val2014.json' in err[0]


@pytest.mark.parametrize('method', ['irn', 'affinitynet', 'seam'])
def test_every_method_runs_baseline_and_cda_on_the_synthetic_coco(method, tmp_path):
    """The whole pipeline with 80 classes (81-label masks); the bank is cut from the view's ground-truth
    masks, since one smoke epoch's pseudo masks hold no single clean object."""
    import run_sample
    work = tmp_path / 'work'
    code = run_sample.main(['--dataset', 'coco14', '--profile', 'smoke', '--method', method, '--work_dir', str(work),
                            '--cda', '--cda_bank_source', str(work / 'coco14' / 'SegmentationClass')])
    assert code == 0
    cam_ids = (work / 'coco14' / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()
    with np.load(work / 'cam' / f'{cam_ids[0]}.npz') as cam:                  # only the present classes
        with np.load(work / 'cache' / 'cls_labels.npz') as stored:
            label = dict(zip(stored['ids'].tolist(), stored['labels']))[cam_ids[0]]
        assert cam['keys'].tolist() == np.flatnonzero(label).tolist()
    for stage in ('', 'cda'):
        result = json.loads((work / stage / 'metrics' / 'eval_sem_seg.json').read_text())
        assert len(result['iou']) == 81
        mask = imutils.read_label_png(work / stage / 'sem_seg' / f'{cam_ids[0]}.png')
        assert mask.max() <= 80
    index = json.loads((work / 'object_bank' / 'index.json').read_text())
    assert index and all(0 <= entry['class'] < 80 for entry in index)
