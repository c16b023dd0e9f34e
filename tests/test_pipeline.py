"""End to end: every step of the baseline and the CDA pass on a tiny generated VOC-format dataset."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import run_sample
from misc.imutils import read_label_png


def test_every_step_writes_its_outputs(smoke_run, synthetic_voc):
    train_ids = (synthetic_voc / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()
    for stage in (smoke_run, smoke_run / 'cda'):
        for weights in ('cam.pt', 'irn.pt', 'cam_checkpoint.pt', 'irn_checkpoint.pt'):
            assert (stage / 'weights' / weights).is_file()
        for image_id in train_ids:
            with np.load(stage / 'cam' / f'{image_id}.npz') as cam:
                keys, strided, high_res = cam['keys'], cam['cam'], cam['high_res']
            assert strided.shape == (len(keys), 16, 16) and high_res.shape == (len(keys), 64, 64)
            assert np.all(high_res <= 1.0 + 1e-6) and np.all(high_res >= 0)
            ir = read_label_png(stage / 'relation_label' / f'{image_id}.png')
            assert set(np.unique(ir)) <= {0, 255} | set((keys + 1).tolist())
            mask = read_label_png(stage / 'sem_seg' / f'{image_id}.png')
            assert mask.shape == (64, 64)
            assert set(np.unique(mask)) <= {0} | set((keys + 1).tolist())


def test_metrics_and_summary(smoke_run):
    for stage in (smoke_run, smoke_run / 'cda'):
        for name in ('eval_cam', 'eval_sem_seg'):
            result = json.loads((stage / 'metrics' / f'{name}.json').read_text())
            assert len(result['iou']) == 21 and 0.0 <= result['miou'] <= 1.0
            assert [row['threshold'] for row in result['sweep']] == [0.3, 0.5, 0.7]
            assert result['best']['miou'] == max(row['miou'] for row in result['sweep'])
    summary = json.loads((smoke_run / 'metrics' / 'summary.json').read_text())
    assert summary['cam_miou_gain'] == pytest.approx(summary['cda']['cam_miou'] - summary['baseline']['cam_miou'])
    assert (smoke_run / 'metrics' / 'summary.md').read_text().startswith('| figure')
    assert (smoke_run / 'report.md').is_file() and (smoke_run / 'contact_sheet.png').is_file()
    bank = json.loads((smoke_run / 'object_bank' / 'index.json').read_text())
    assert len(bank) > 0
    config = json.loads((smoke_run / 'config.json').read_text())
    assert config['profile'] == 'smoke' and 'cda_train_cam' in config['steps']


def test_rerun_skips_finished_outputs(smoke_run, synthetic_voc):
    cam = smoke_run / 'cam'
    before = {p.name: os.stat(p).st_mtime_ns for p in cam.iterdir()}
    code = run_sample.main(['--profile', 'smoke', '--voc12_root', str(synthetic_voc), '--work_dir', str(smoke_run),
                            '--steps', 'train_cam,make_cam'])
    assert code == 0
    assert {p.name: os.stat(p).st_mtime_ns for p in cam.iterdir()} == before


def test_instance_steps(smoke_run, synthetic_voc):
    from pycocotools.coco import COCO
    from step.make_ins_seg_labels import read_instances
    train_ids = (synthetic_voc / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()
    summary = json.loads((smoke_run / 'metrics' / 'summary.json').read_text())
    for stage, figures in ((smoke_run, summary['baseline']), (smoke_run / 'cda', summary['cda'])):
        for image_id in train_ids:
            found = read_instances(stage / 'ins_seg' / f'{image_id}.npz')
            assert found['masks'].shape[1:] == (64, 64) and len(found['classes']) == len(found['scores'])
            with np.load(stage / 'cam' / f'{image_id}.npz') as cam:
                assert set(found['classes'].tolist()) <= set(cam['keys'].tolist())
        result = json.loads((stage / 'metrics' / 'eval_ins_seg.json').read_text())
        assert result['images'] == len(train_ids) and result['gt_instances'] > 0
        for key in ('map', 'map25', 'map75', 'map50_void_ignored'):
            assert 0.0 <= result[key] <= 1.0
        assert result['map25'] >= result['map'] >= result['map75']
        assert len(result['ap']) == 20 and figures['ins_seg_map50'] == result['map']
        api = COCO(str(stage / 'coco' / 'ins_seg_train.json'))
        assert len(api.getImgIds()) == len(train_ids) and len(api.getCatIds()) == 20
    assert 'instance mAP@0.5' in (smoke_run / 'metrics' / 'summary.md').read_text()
    assert 'instance masks: mAP' in (smoke_run / 'report.md').read_text()


def test_instance_steps_find_objects_from_clean_cams(smoke_run, synthetic_voc, tmp_path):
    """One epoch of CAM training gives empty CAMs; class masks pooled to stride 4 stand in for them, so that
    make_ins_seg and eval_ins_seg are checked on real detections (the IRN, hence the instance split, is the
    smoke run's)."""
    import shutil
    import cv2
    from misc.imutils import save_npz
    ids = (synthetic_voc / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()[:4]
    (tmp_path / 'ids.txt').write_text('\n'.join(ids) + '\n')
    (tmp_path / 'weights').mkdir()
    shutil.copy(smoke_run / 'weights' / 'irn.pt', tmp_path / 'weights' / 'irn.pt')
    for image_id in ids:
        label = read_label_png(synthetic_voc / 'SegmentationClass' / f'{image_id}.png')
        keys = np.array([c - 1 for c in np.unique(label) if c not in (0, 255)])
        cams = np.stack([cv2.resize((label == k + 1).astype(np.float32), (16, 16), interpolation=cv2.INTER_AREA)
                         for k in keys])
        save_npz(tmp_path / 'cam' / f'{image_id}.npz', keys=keys, cam=cams, high_res=np.zeros((len(keys), 64, 64)))
    code = run_sample.main(['--profile', 'smoke', '--voc12_root', str(synthetic_voc), '--work_dir', str(tmp_path),
                            '--steps', 'make_ins_seg,eval_ins_seg', '--infer_list', str(tmp_path / 'ids.txt'),
                            '--chainer_eval_set', str(tmp_path / 'ids.txt'), '--no-ins_seg_coco',
                            '--exp_times', '0'])   # no walk: the smoke IRN's boundaries would spread the CAMs
    assert code == 0
    result = json.loads((tmp_path / 'metrics' / 'eval_ins_seg.json').read_text())
    assert result['images'] == 4 and result['pred_instances'] > 0
    assert result['map25'] > 0
    assert not (tmp_path / 'coco').exists()
