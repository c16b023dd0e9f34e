"""Outputs know what made them: a changed setting redoes its step and the steps after it, an unchanged
re-run redoes nothing, and the object bank is cut from exactly the train list's pseudo masks."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import run_sample


def _args(voc: Path, work_dir: Path, *extra: str) -> list[str]:
    """The smoke_run fixture's command line, plus `extra`."""
    return ['--profile', 'smoke', '--voc12_root', str(voc), '--work_dir', str(work_dir), '--cda',
            '--cda_bank_source', str(voc / 'SegmentationClass'), '--sweep', '0.3', '0.5', '0.7', *extra]


N_CAMS = 16 + 4      # CAMs of the fixture's train list and of its context-shift split


def _stamps(folder: Path) -> dict[str, int]:
    """Modification times of every output file under a work dir (records and logs excluded)."""
    return {str(p.relative_to(folder)): os.stat(p).st_mtime_ns for p in folder.rglob('*')
            if p.is_file() and 'fingerprints' not in p.parts and p.name not in ('log.txt', 'config.json')
            and p.parent.name != 'metrics' and p.suffix != '.md' and p.name != 'contact_sheet.png'}


def _redone(before: dict[str, int], after: dict[str, int], prefix: str) -> tuple[int, int]:
    """(files under prefix rewritten or new, files under prefix in all)."""
    names = [k for k in after if k.startswith(prefix)]
    return sum(before.get(k) != after[k] for k in names), len(names)


@pytest.fixture
def work_copy(smoke_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / 'work'
    shutil.copytree(smoke_run, copy)     # copy2 keeps the modification times
    return copy


def test_unchanged_rerun_redoes_nothing(work_copy, synthetic_voc):
    before = _stamps(work_copy)
    assert run_sample.main(_args(synthetic_voc, work_copy)) == 0
    after = _stamps(work_copy)
    assert after == before
    record = json.loads((work_copy / 'fingerprints' / 'make_relation_labels.json').read_text())
    assert record['state'] == 'done' and record['settings']['conf_fg_thres'] == 0.6


def test_changed_threshold_redoes_its_step_and_the_ones_after(work_copy, synthetic_voc):
    before = _stamps(work_copy)
    steps = 'make_cam,cam_to_ir_label,train_irn,make_sem_seg,eval_sem_seg'
    assert run_sample.main(_args(synthetic_voc, work_copy, '--steps', steps, '--conf_fg_thres', '0.65')) == 0
    after = _stamps(work_copy)
    assert _redone(before, after, 'cam/') == (0, N_CAMS)              # upstream of the change: kept
    for prefix in ('relation_label/', 'weights/irn.pt', 'sem_seg/'):        # the step and the ones after it
        redone, total = _redone(before, after, prefix)
        assert total and redone == total, prefix
    assert _redone(before, after, 'cda/') == (0, len([k for k in after if k.startswith('cda/')]))
    log = (work_copy / 'log.txt').read_text().splitlines()
    assert any('make_relation_labels: redoing' in line and '--conf_fg_thres 0.6 -> 0.65' in line for line in log)
    assert any('train_relation: redoing' in line and 'upstream make_relation_labels' in line for line in log)
    record = json.loads((work_copy / 'fingerprints' / 'eval_sem_seg.json').read_text())
    assert record['state'] == 'done'


def test_changed_walk_threshold_keeps_the_trained_irn(work_copy, synthetic_voc):
    before = _stamps(work_copy)
    steps = 'train_irn,make_sem_seg,eval_sem_seg'
    assert run_sample.main(_args(synthetic_voc, work_copy, '--steps', steps, '--sem_seg_bg_thres', '0.4')) == 0
    after = _stamps(work_copy)
    assert _redone(before, after, 'weights/irn') == (0, 2)
    redone, total = _redone(before, after, 'sem_seg/')
    assert total == 16 and redone == total
    metrics = json.loads((work_copy / 'metrics' / 'eval_sem_seg.json').read_text())
    assert metrics['threshold'] == 0.4


def test_changed_epochs_retrain_and_new_bank_source_rebuilds(work_copy, synthetic_voc, tmp_path):
    before = _stamps(work_copy)
    assert run_sample.main(_args(synthetic_voc, work_copy, '--steps', 'train_cam,make_cam',
                                 '--cam_num_epoches', '2')) == 0
    after = _stamps(work_copy)
    assert _redone(before, after, 'weights/cam.pt') == (1, 1) and _redone(before, after, 'cam/') == (N_CAMS, N_CAMS)

    # Another bank source (the same masks less two files): the bank and the CDA training redo theirs.
    source = tmp_path / 'other_masks'
    shutil.copytree(synthetic_voc / 'SegmentationClass', source)
    for path in sorted(source.glob('*.png'))[:2]:
        path.unlink()
    args = _args(synthetic_voc, work_copy, '--steps', 'make_object_bank,cda_train_cam', '--cam_num_epoches', '2')
    args[args.index('--cda_bank_source') + 1] = str(source)
    before = _stamps(work_copy)
    assert run_sample.main(args) == 0
    after = _stamps(work_copy)
    assert _redone(before, after, 'object_bank/index.json') == (1, 1)
    assert _redone(before, after, 'cda/weights/cam.pt') == (1, 1)
    counts = json.loads((work_copy / 'object_bank' / 'counts.json').read_text())
    assert counts['masks_scanned'] == 14


def test_bank_from_the_train_lists_own_pseudo_masks(work_copy, synthetic_voc):
    """As if the baseline had made pseudo masks for 4 of the 16 train-list images (as VOC's train is a part
    of train_aug): the bank step makes the other 12 first, then reads exactly the list's 16, never strays.
    The 4 kept masks are replaced by ground truth, since one smoke epoch's masks hold no objects."""
    train_ids = (synthetic_voc / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()
    kept = train_ids[:4]
    for image_id in train_ids:
        (work_copy / 'sem_seg' / f'{image_id}.png').unlink()
    for image_id in kept:
        shutil.copy(synthetic_voc / 'SegmentationClass' / f'{image_id}.png', work_copy / 'sem_seg')
    shutil.copy(synthetic_voc / 'SegmentationClass' / f'{train_ids[5]}.png',
                work_copy / 'sem_seg' / 'stray_from_another_run.png')      # no such image: reading it would fail
    args = ['--profile', 'smoke', '--voc12_root', str(synthetic_voc), '--work_dir', str(work_copy),
            '--steps', 'make_object_bank', '--cda_min_fg_ratio', '0', '--cda_max_fg_ratio', '1']
    assert run_sample.main(args) == 0
    assert all((work_copy / 'sem_seg' / f'{i}.png').is_file() for i in train_ids)
    counts = json.loads((work_copy / 'object_bank' / 'counts.json').read_text())
    assert counts['masks_scanned'] == len(train_ids)
    index = json.loads((work_copy / 'object_bank' / 'index.json').read_text())
    assert index and {entry['source'] for entry in index} <= set(train_ids)
    summary = json.loads((work_copy / 'metrics' / 'summary.json').read_text())
    assert summary['object_bank']['masks_scanned'] == len(train_ids)


def test_fingerprint_follows_settings_and_weights_files(tmp_path):
    import dataclasses
    import time
    from misc import fingerprint
    from misc.config import Config
    from step import make_cam, pipeline, train_cam
    weights = tmp_path / 'resnet18.pth'
    weights.write_bytes(b'one')
    cfg = Config(work_dir=tmp_path / 'work', pretrained=str(weights))
    first = pipeline.fingerprint_of(cfg, 'train_cam', train_cam)
    assert first == pipeline.fingerprint_of(cfg, 'train_cam', train_cam)
    assert 'cda_variant' not in first['settings']                    # a CDA-pass setting only
    assert 'cda_variant' in pipeline.fingerprint_of(dataclasses.replace(cfg, stage='cda'), 'train_cam',
                                                   train_cam)['settings']
    time.sleep(0.01)
    weights.write_bytes(b'other weights')                             # same path, new contents
    second = pipeline.fingerprint_of(cfg, 'train_cam', train_cam)
    assert second['digest'] != first['digest'] and fingerprint.changes(first, second) == ['input pretrained']
    epochs = pipeline.fingerprint_of(dataclasses.replace(cfg, cam_num_epoches=7), 'train_cam', train_cam)
    assert fingerprint.changes(second, epochs) == ['--cam_num_epoches 5 -> 7']
    # make_cam's fingerprint holds train_cam's recorded one
    fingerprint.finish(cfg, 'train_cam', second)
    before = pipeline.fingerprint_of(cfg, 'make_cam', make_cam)
    fingerprint.finish(cfg, 'train_cam', epochs)
    after = pipeline.fingerprint_of(cfg, 'make_cam', make_cam)
    assert fingerprint.changes(before, after) == ['upstream train_cam']


def test_turning_the_coco_export_off_and_on_keeps_the_instance_masks(work_copy, synthetic_voc):
    coco = work_copy / 'coco' / 'ins_seg_train.json'
    before = _stamps(work_copy)
    assert run_sample.main(_args(synthetic_voc, work_copy, '--steps', 'make_ins_seg', '--no-ins_seg_coco')) == 0
    coco.unlink()
    assert run_sample.main(_args(synthetic_voc, work_copy, '--steps', 'make_ins_seg', '--ins_seg_coco')) == 0
    after = _stamps(work_copy)
    redone, total = _redone(before, after, 'ins_seg/')
    assert redone == 0 and total > 0
    assert json.loads(coco.read_text())['images']          # the export is written again from the same files


def test_cam_dropout_is_fingerprinted_for_resnet38_cam_nets_only(tmp_path):
    """Turning the ResNet-38 dropout off retrains that CAM network; IRNet's ResNet CAM nets have no such
    switch, so its value does not enter (and existing IRNet work dirs are not redone)."""
    import dataclasses
    from misc import fingerprint
    from step import pipeline, train_cam, train_seam
    from step.registry import parse_config
    for method, module in (('affinitynet', train_cam), ('seam', train_seam)):
        cfg = parse_config(['--method', method, '--work_dir', str(tmp_path / method)])
        on = pipeline.fingerprint_of(dataclasses.replace(cfg, cam_dropout=True), 'train_cam', module)
        off = pipeline.fingerprint_of(dataclasses.replace(cfg, cam_dropout=False), 'train_cam', module)
        assert fingerprint.changes(on, off) == ['--cam_dropout True -> False']
    irn = parse_config(['--work_dir', str(tmp_path / 'irn')])
    assert 'cam_dropout' not in pipeline.fingerprint_of(irn, 'train_cam', train_cam)['settings']
