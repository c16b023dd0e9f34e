"""Bad input gets one line naming the file or value and the fix, exit status 2, and no traceback."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import run_sample

ROOT = Path(__file__).resolve().parents[1]


def run_main(capsys, *args) -> tuple[int, str]:
    try:
        code = run_sample.main([str(a) for a in args])
    except SystemExit as e:          # argparse
        code = e.code
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert 'Traceback' not in err
    lines = [line for line in err.replace('\r', '\n').splitlines() if line.strip()
             and not line.startswith('usage:') and not line.startswith('  ') and 'warning' not in line.lower()
             and 'it/s' not in line and 'img/s' not in line]     # progress bars share stderr
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def voc_copy(synthetic_voc, tmp_path) -> Path:
    root = tmp_path / 'voc'
    shutil.copytree(synthetic_voc, root)
    return root


SMOKE = ['--profile', 'smoke']


def test_missing_root(capsys, tmp_path):
    code, err = run_main(capsys, *SMOKE, '--voc12_root', tmp_path / 'nope', '--work_dir', tmp_path / 'w')
    assert_one_line_error(code, err, 'nope', 'no such folder')


def test_root_without_images(capsys, tmp_path):
    (tmp_path / 'empty' / 'ImageSets').mkdir(parents=True)
    code, err = run_main(capsys, *SMOKE, '--voc12_root', tmp_path / 'empty', '--work_dir', tmp_path / 'w')
    assert_one_line_error(code, err, 'JPEGImages')


def test_list_naming_missing_image(capsys, voc_copy, tmp_path):
    listed = tmp_path / 'list.txt'
    listed.write_text('2099_000001\n')
    code, err = run_main(capsys, *SMOKE, '--voc12_root', voc_copy, '--work_dir', tmp_path / 'w',
                         '--train_list', listed)
    assert_one_line_error(code, err, '2099_000001.jpg')


def test_empty_list(capsys, voc_copy, tmp_path):
    listed = tmp_path / 'list.txt'
    listed.write_text('\n')
    code, err = run_main(capsys, *SMOKE, '--voc12_root', voc_copy, '--work_dir', tmp_path / 'w', '--val_list', listed)
    assert_one_line_error(code, err, 'list.txt', 'empty')


def test_truncated_jpeg_fails_before_training(capsys, voc_copy, tmp_path):
    image_id = (voc_copy / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()[0]
    path = voc_copy / 'JPEGImages' / f'{image_id}.jpg'
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    code, err = run_main(capsys, *SMOKE, '--voc12_root', voc_copy, '--work_dir', tmp_path / 'w')
    assert_one_line_error(code, err, f'{image_id}.jpg', 'truncated')
    assert not (tmp_path / 'w' / 'weights').exists()


def test_not_an_image(capsys, voc_copy, tmp_path):
    image_id = (voc_copy / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()[0]
    (voc_copy / 'JPEGImages' / f'{image_id}.jpg').write_text('not a jpeg')
    code, err = run_main(capsys, *SMOKE, '--voc12_root', voc_copy, '--work_dir', tmp_path / 'w')
    assert_one_line_error(code, err, f'{image_id}.jpg')


def test_convertible_images_are_accepted(voc_copy):
    from voc12.dataloader import check_images
    from misc.imutils import read_rgb
    ids = (voc_copy / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()[:3]
    for image_id, mode in zip(ids, ('L', 'CMYK', 'RGB')):
        path = voc_copy / 'JPEGImages' / f'{image_id}.jpg'
        Image.open(path).convert(mode).save(path, format='JPEG')
    check_images(voc_copy, ids)
    assert all(read_rgb(voc_copy / 'JPEGImages' / f'{i}.jpg').shape[2] == 3 for i in ids)


def test_mask_size_mismatch(capsys, voc_copy, tmp_path):
    work = tmp_path / 'w'
    args = [*SMOKE, '--voc12_root', voc_copy, '--work_dir', work]
    assert run_main(capsys, *args, '--steps', 'train_cam,make_cam')[0] == 0
    image_id = (voc_copy / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()[0]
    mask_path = voc_copy / 'SegmentationClass' / f'{image_id}.png'
    mask = Image.open(mask_path)
    mask.resize((mask.width + 3, mask.height)).save(mask_path)
    code, err = run_main(capsys, *args, '--steps', 'eval_cam')
    assert_one_line_error(code, err, f'{image_id}.png', 'must match')


def test_image_without_label(capsys, voc_copy, tmp_path):
    image_id = (voc_copy / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()[0]
    xml = voc_copy / 'Annotations' / f'{image_id}.xml'
    xml.write_text('<annotation><filename>x.jpg</filename></annotation>')
    code, err = run_main(capsys, *SMOKE, '--voc12_root', voc_copy, '--work_dir', tmp_path / 'w')
    assert_one_line_error(code, err, image_id, 'no class label')


def test_empty_object_bank(capsys, voc_copy, tmp_path):
    masks = tmp_path / 'masks'
    masks.mkdir()
    image_id = (voc_copy / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()[0]
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks / f'{image_id}.png')
    code, err = run_main(capsys, *SMOKE, '--voc12_root', voc_copy, '--work_dir', tmp_path / 'w',
                         '--steps', 'make_object_bank,cda_train_cam', '--cda_bank_source', masks)
    assert_one_line_error(code, err, 'object bank', 'empty')


@pytest.mark.parametrize('flag,value', [('--cam_eval_thres', '1.5'), ('--conf_fg_thres', '-0.1'),
                                        ('--cam_crop_size', '0'), ('--cam_num_epoches', '-2'),
                                        ('--steps', 'train_cam,bogus'), ('--train_cam_pass', 'maybe')])
def test_flag_values_out_of_range(capsys, tmp_path, flag, value):
    code, err = run_main(capsys, *SMOKE, '--work_dir', tmp_path / 'w', flag, value)
    assert code == 2 and 'Traceback' not in err
    line = err.strip().splitlines()[-1]           # the usage line above it names every flag
    assert flag in line or value in line


def test_cda_batch_too_small(capsys, tmp_path):
    code, err = run_main(capsys, *SMOKE, '--work_dir', tmp_path / 'w', '--cda', '--cam_batch_size', '1')
    assert code == 2 and '--cam_batch_size 1 is too small for CDA' in err.strip().splitlines()[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_cuda_without_gpu(capsys, tmp_path):
    code, err = run_main(capsys, *SMOKE, '--work_dir', tmp_path / 'w', '--device', 'cuda')
    assert code == 2 and '--device cuda' in err


def test_unwritable_work_dir(capsys, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    code, err = run_main(capsys, *SMOKE, '--work_dir', blocker / 'sub')
    assert_one_line_error(code, err, 'not writable')


def test_weights_of_the_wrong_architecture(capsys, voc_copy, tmp_path):
    weights = tmp_path / 'r50.pth'
    torch.save(torchvision.models.resnet50().state_dict(), weights)
    code, err = run_main(capsys, *SMOKE, '--voc12_root', voc_copy, '--work_dir', tmp_path / 'w',
                         '--pretrained', weights, '--steps', 'train_cam')
    assert_one_line_error(code, err, 'r50.pth', 'resnet18')


def test_missing_inputs_name_the_step(capsys, voc_copy, tmp_path):
    code, err = run_main(capsys, *SMOKE, '--voc12_root', voc_copy, '--work_dir', tmp_path / 'w',
                         '--steps', 'cam_to_ir_label')
    assert_one_line_error(code, err, 'make_cam')


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run([sys.executable, 'run_sample.py', *SMOKE, '--voc12_root', str(tmp_path / 'nope'),
                             '--work_dir', str(tmp_path / 'w'), '--debug'], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and 'Traceback' in result.stderr
