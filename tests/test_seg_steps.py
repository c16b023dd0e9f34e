"""The segmentation steps: resume, 2 gloo processes = 1 process, the test-server layout, the own-images command,
and the smoke pipeline's figures (baseline, CDA and the fully supervised bound)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from misc.config import with_stage
from step.registry import parse_config
from misc.imutils import read_label_png
from misc.metrics import ConfusionMatrix
from test_scale_out import run          # run_sample.py in a subprocess (torchrun when asked)

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
FS = 'fully_supervised'


def fs_config(voc: Path, work: Path, *extra: str):
    """Smoke config of the fully supervised stage (ground-truth labels: no CAM steps needed)."""
    cfg = parse_config(['--profile', 'smoke', '--voc12_root', str(voc), '--work_dir', str(work), '--seed', '2',
                        '--num_workers', '0', *extra])
    return with_stage(cfg, FS)


def weights(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)['model']


def test_resumed_training_reaches_the_same_weights(synthetic_voc, tmp_path):
    from step import train_seg
    extra = ('--seg_iterations', '6', '--seg_checkpoint_every', '2')
    straight = fs_config(synthetic_voc, tmp_path / 'straight', *extra)
    train_seg.train(straight)
    killed = fs_config(synthetic_voc, tmp_path / 'killed', *extra)
    stopped = train_seg.train(killed, stop_after=3)          # as if killed after iteration 3 (checkpoint at 3)
    assert stopped['stopped_at'] == 3 and not (killed.weights_dir / 'seg.pt').exists()
    checkpoint = torch.load(killed.weights_dir / 'seg_checkpoint.pt', map_location='cpu', weights_only=False)
    assert checkpoint['iteration'] == 3
    resumed = train_seg.train(dataclasses.replace(killed, resume=True))
    assert resumed['iterations'] == 3                          # only the remaining ones
    a, b = weights(straight.weights_dir / 'seg.pt'), weights(killed.weights_dir / 'seg.pt')
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], checkpoint['model'][k])]
    assert changed                                             # the last 3 iterations did move the weights
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_two_gloo_processes_match_one_accumulating(synthetic_voc, tmp_path):
    """Frozen BN (the network from a file, as DeepLab-v2 with its init file): 2 ranks of one chunk each equal
    1 process accumulating the same 2 chunks; inference is split by rank and scored on all-reduced matrices."""
    from net.deeplab import DeepLabV2
    init = tmp_path / 'init.pth'
    torch.manual_seed(0)
    torch.save(DeepLabV2(21, 18, width=16, scales=(0.5,)).state_dict(), init)
    common = ['run_sample.py', '--profile', 'smoke', '--voc12_root', str(synthetic_voc), '--seed', '4',
              '--steps', 'fs_train_seg,fs_make_seg,fs_eval_seg', '--seg_pretrained', str(init),
              '--seg_iterations', '5', '--seg_batch_size', '4', '--seg_learning_rate', '0.001']
    one, two = tmp_path / 'one', tmp_path / 'two'
    run(common + ['--work_dir', str(one), '--seg_accumulate', '2'])
    run(common + ['--work_dir', str(two)], torchrun=2)
    a, b = weights(one / FS / 'weights' / 'seg.pt'), weights(two / FS / 'weights' / 'seg.pt')
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    ids = sorted(p.stem for p in (one / FS / 'seg').glob('*.png'))
    assert ids == sorted(p.stem for p in (two / FS / 'seg').glob('*.png')) and len(ids) == 8      # the val list
    agree = [np.mean(read_label_png(one / FS / 'seg' / f'{i}.png') == read_label_png(two / FS / 'seg' / f'{i}.png'))
             for i in ids]
    assert np.mean(agree) > 0.999
    m1, m2 = (json.loads((w / FS / 'metrics' / 'eval_seg.json').read_text()) for w in (one, two))
    assert m1['miou'] == pytest.approx(m2['miou'], abs=1e-4) and m1['images'] == m2['images'] == 8
    assert m1['miou_crf'] == pytest.approx(m2['miou_crf'], abs=1e-4)


@pytest.fixture(scope='module')
def trained_fs(synthetic_voc, tmp_path_factory) -> Path:
    """work_dir of a smoke fully supervised stage: train_seg, make_seg on val + a test list without ground truth."""
    import shutil
    voc = tmp_path_factory.mktemp('voc_with_test') / 'VOC2012'
    shutil.copytree(synthetic_voc, voc)
    rng = np.random.default_rng(0)
    test_ids = ['2099_000001', '2099_000002']
    for image_id in test_ids:                 # test images: no SegmentationClass, no Annotations
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(voc / 'JPEGImages' / f'{image_id}.jpg')
    (voc / 'ImageSets' / 'Segmentation' / 'test.txt').write_text('\n'.join(test_ids) + '\n')
    work = tmp_path_factory.mktemp('fs')
    import run_sample
    assert run_sample.main(['--profile', 'smoke', '--voc12_root', str(voc), '--work_dir', str(work), '--steps',
                            'fs_train_seg,fs_make_seg,fs_eval_seg', '--seg_test_list', 'test']) == 0
    return work


def test_test_list_goes_to_the_server_layout(trained_fs):
    stage = trained_fs / FS
    layout = stage / 'results' / 'VOC2012' / 'Segmentation' / 'comp6_test_cls'
    assert sorted(p.name for p in layout.iterdir()) == ['2099_000001.png', '2099_000002.png']
    for path in layout.iterdir():
        with Image.open(path) as image:
            assert image.mode == 'P' and image.size == (56, 40)       # indexed palette PNG at the image's size
            palette = image.getpalette()[:6]
        assert palette == [0, 0, 0, 128, 0, 0]                        # the VOC colours of classes 0 and 1
        assert read_label_png(path).max() <= 20
        assert np.array_equal(read_label_png(path), read_label_png(stage / 'seg_crf' / path.name))   # CRF ones
    with tarfile.open(stage / 'results_test.tar.gz') as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert names == [f'results/VOC2012/Segmentation/comp6_test_cls/2099_00000{i}.png' for i in (1, 2)]
    result = json.loads((stage / 'metrics' / 'eval_seg.json').read_text())
    assert result['images'] == 8                                      # the val list only: test has no ground truth


def test_eval_seg_is_the_miou_of_the_written_predictions(trained_fs, synthetic_voc):
    stage = trained_fs / FS
    result = json.loads((stage / 'metrics' / 'eval_seg.json').read_text())
    ids = (synthetic_voc / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()
    for folder, key in (('seg', 'miou'), ('seg_crf', 'miou_crf')):
        matrix = ConfusionMatrix(21)
        for image_id in ids:
            matrix.update(read_label_png(synthetic_voc / 'SegmentationClass' / f'{image_id}.png'),
                          read_label_png(stage / folder / f'{image_id}.png'))
        assert result[key] == pytest.approx(matrix.compute()['miou'], abs=1e-12)
    assert len(result['iou']) == 21 and result['classes'][0] == 'background'


def test_own_images_command_skips_a_broken_file(trained_fs, synthetic_voc, tmp_path):
    import shutil
    images = tmp_path / 'images'
    images.mkdir()
    ids = (synthetic_voc / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()[:2]
    for image_id in ids:
        shutil.copy(synthetic_voc / 'JPEGImages' / f'{image_id}.jpg', images / f'{image_id}.jpg')
    Image.fromarray(np.full((30, 20, 3), 200, np.uint8)).save(images / 'grey.png')
    (images / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    out = tmp_path / 'out'
    result = subprocess.run([sys.executable, '-m', 'step.segment_images', '--seg_weights',
                             str(trained_fs / FS / 'weights' / 'seg.pt'), '--images', str(images), '--out_dir',
                             str(out), '--device', 'cpu'], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1                                     # some file skipped, the others written
    lines = [line for line in result.stderr.splitlines() if line.startswith('skipped')]
    assert len(lines) == 1 and 'broken.jpg' in lines[0]
    assert '3 image(s) segmented' in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f'{i}.png' for i in ids] + [f'{i}_overlay.jpg' for i in ids] + ['grey.png', 'grey_overlay.jpg'])
    with Image.open(out / 'grey.png') as image:
        assert image.mode == 'P' and image.size == (20, 30)
    # the same network's make_seg output for the same image
    for image_id in ids:
        assert np.array_equal(read_label_png(out / f'{image_id}.png'),
                              read_label_png(trained_fs / FS / 'seg' / f'{image_id}.png'))


def test_smoke_pipeline_reports_val_miou_for_both_passes_and_the_bound(smoke_run):
    summary = json.loads((smoke_run / 'metrics' / 'summary.json').read_text())
    for stage, entry in ((smoke_run, summary['baseline']), (smoke_run / 'cda', summary['cda']),
                         (smoke_run / FS, summary['fully_supervised'])):
        result = json.loads((stage / 'metrics' / 'eval_seg.json').read_text())
        assert entry['seg_miou_val'] == result['miou'] and len(result['iou']) == 21
        if stage != smoke_run / FS:
            assert entry['seg_miou_val_crf'] == result['miou_crf']
            assert (stage / 'weights' / 'seg.pt').is_file()
            # trained on that pass's own pseudo masks of the train list
            record = json.loads((stage / 'fingerprints' / 'train_seg.json').read_text())
            key = 'make_sem_seg' if stage == smoke_run else 'cda/make_sem_seg'
            assert record['upstream'] == {key: json.loads(
                (stage / 'fingerprints' / 'make_sem_seg.json').read_text())['digest']}
    assert summary['seg_miou_val_gain'] == pytest.approx(summary['cda']['seg_miou_val'] -
                                                         summary['baseline']['seg_miou_val'])
    table = (smoke_run / 'metrics' / 'summary.md').read_text()
    assert '| segmentation network, val mIoU |' in table and 'fully supervised upper bound' in table
    assert 'segmentation network: val mIoU' in (smoke_run / 'report.md').read_text()
