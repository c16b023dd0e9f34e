"""torchrun with 2 gloo processes equals 1 process; killed runs resume to identical outputs; seeded runs repeat."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from misc.imutils import read_label_png

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


@pytest.fixture(scope='module')
def frozen_weights(tmp_path_factory) -> Path:
    """A resnet18 state dict on disk: with `--pretrained PATH` BN is frozen, so per-process batches give
    the same gradients as one process (trainable BN would see different batch statistics on CPU)."""
    path = tmp_path_factory.mktemp('weights') / 'resnet18.pth'
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def smoke_args(voc: Path, work: Path, weights: Path, *extra) -> list[str]:
    return ['run_sample.py', '--profile', 'smoke', '--voc12_root', str(voc), '--work_dir', str(work),
            '--pretrained', str(weights), '--seed', '3', *map(str, extra)]


def run(args: list[str], torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = [sys.executable]
    if torchrun:
        launcher += ['-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={torchrun}']
    result = subprocess.run(launcher + args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def state(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)['model']


STEPS = 'train_cam,make_cam,eval_cam,cam_to_ir_label,train_irn,make_sem_seg,eval_sem_seg'


def test_two_gloo_processes_match_one(synthetic_voc, frozen_weights, tmp_path):
    one, two = tmp_path / 'one', tmp_path / 'two'
    run(smoke_args(synthetic_voc, one, frozen_weights, '--steps', STEPS, '--cam_num_epoches', 2))
    run(smoke_args(synthetic_voc, two, frozen_weights, '--steps', STEPS, '--cam_num_epoches', 2), torchrun=2)
    for name in ('cam.pt', 'irn.pt'):
        a, b = state(one / 'weights' / name), state(two / 'weights' / name)
        assert a.keys() == b.keys()
        for key in a:
            if key.endswith('running_mean') and 'mean_shift' in key:
                continue        # mean of per-batch means: batches differ when sharded
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f'{name}: {key}')
    ids = sorted(p.stem for p in (one / 'cam').glob('*.npz'))
    assert ids == sorted(p.stem for p in (two / 'cam').glob('*.npz')) and len(ids) == 16 + 4   # train + shift
    agree = []
    for image_id in [i for i in ids if (one / 'sem_seg' / f'{i}.png').is_file()]:
        with np.load(one / 'cam' / f'{image_id}.npz') as a, np.load(two / 'cam' / f'{image_id}.npz') as b:
            np.testing.assert_allclose(a['high_res'], b['high_res'], rtol=1e-3, atol=1e-4)
        agree.append(np.mean(read_label_png(one / 'sem_seg' / f'{image_id}.png') ==
                             read_label_png(two / 'sem_seg' / f'{image_id}.png')))
    assert np.mean(agree) > 0.999
    m1 = json.loads((one / 'metrics' / 'eval_cam.json').read_text())
    m2 = json.loads((two / 'metrics' / 'eval_cam.json').read_text())
    assert m1['miou'] == pytest.approx(m2['miou'], abs=1e-4)
    # The leakage sums and the shift split's matrix are all-reduced over ranks like the eval set's.
    assert m1['shift']['miou'] == pytest.approx(m2['shift']['miou'], abs=1e-4)
    assert m1['leakage_pairs_usual'] == m2['leakage_pairs_usual']
    for key in ('leakage_usual', 'leakage_foreign'):
        assert (m1[key] is None and m2[key] is None) or m1[key] == pytest.approx(m2[key], abs=1e-4)


KILL_AFTER_CHECKPOINT = """
import os, signal, sys
sys.path.insert(0, os.getcwd())
from misc import torchutils
import run_sample
save = torchutils.save_epoch_checkpoint

def save_then_die(path, model, optimizer, scheduler, epoch, config):
    save(path, model, optimizer, scheduler, epoch, config)
    if epoch == int(os.environ['KILL_AFTER_EPOCH']):
        os.kill(os.getpid(), signal.SIGKILL)       # as a kill -9 right after the checkpoint is written

torchutils.save_epoch_checkpoint = save_then_die
sys.exit(run_sample.main(sys.argv[1:]))
"""


def test_killed_training_resumes_to_the_same_weights(synthetic_voc, frozen_weights, tmp_path):
    steps = ['--steps', 'train_cam', '--cam_num_epoches', 6]
    run(smoke_args(synthetic_voc, tmp_path / 'straight', frozen_weights, *steps))
    work = tmp_path / 'killed'
    checkpoint, final = work / 'weights' / 'cam_checkpoint.pt', work / 'weights' / 'cam.pt'
    args = smoke_args(synthetic_voc, work, frozen_weights, *steps)[1:]       # without the script's name
    killed = subprocess.run([sys.executable, '-c', KILL_AFTER_CHECKPOINT, *map(str, args)], cwd=ROOT,
                            env=dict(ENV, KILL_AFTER_EPOCH='2'), capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL and not final.exists()
    assert torch.load(checkpoint, map_location='cpu', weights_only=False)['epoch'] == 2
    run(smoke_args(synthetic_voc, work, frozen_weights, *steps, '--resume'))
    a, b = state(tmp_path / 'straight' / 'weights' / 'cam.pt'), state(final)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_interrupted_per_image_step_finishes_identically(synthetic_voc, frozen_weights, tmp_path):
    work = tmp_path / 'w'
    run(smoke_args(synthetic_voc, work, frozen_weights, '--steps', 'train_cam,make_cam'))
    reference = {p.name: p.read_bytes() for p in (work / 'cam').glob('*.npz')}
    files = sorted((work / 'cam').glob('*.npz'))
    for path in files[::2]:
        path.unlink()                                        # never made
    files[1].write_bytes(files[1].read_bytes()[:100])        # half-written by a writer without atomic renames
    (work / 'cam' / '.stray.npz.tmp').write_bytes(b'partial')  # what a kill during our atomic write leaves
    run(smoke_args(synthetic_voc, work, frozen_weights, '--steps', 'make_cam'))
    redone = {p.name: p.read_bytes() for p in (work / 'cam').glob('*.npz')}
    assert redone.keys() == reference.keys()
    for name in reference:
        with np.load(work / 'cam' / name) as a:
            np.testing.assert_array_equal(a['high_res'], np.load(__import__('io').BytesIO(reference[name]))['high_res'])


def test_seeded_deterministic_runs_repeat(synthetic_voc, tmp_path):
    results = []
    for name in ('a', 'b'):
        work = tmp_path / name
        run(['run_sample.py', '--profile', 'smoke', '--voc12_root', str(synthetic_voc), '--work_dir', str(work),
             '--seed', '5', '--deterministic', '--steps', STEPS])
        results.append([json.loads((work / 'metrics' / f'{m}.json').read_text())
                        for m in ('eval_cam', 'eval_sem_seg')])
    assert results[0] == results[1]
