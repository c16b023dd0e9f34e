"""SEAM: the PCM, the loss helpers on hand values, gradient routing, one training step, resume, and DDP."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from misc import torchutils                                              # noqa: E402
from misc.config import with_stage                                      # noqa: E402
from step.registry import parse_config                                      # noqa: E402
from misc.seam_losses import adaptive_min_pooling_loss, max_norm, max_onehot, seam_losses   # noqa: E402
from net.resnet38_seam import Net, pcm_input_scores, pixel_correlation    # noqa: E402
from step import make_cam_seam, train_cam, train_seam                     # noqa: E402

CPU = torch.device('cpu')
WIDTH = 0.0625


def tiny_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(pretrained='none', width=WIDTH)


# ----------------------------------------------------------------------------- PCM

def test_pcm_of_constant_features_gives_the_spatial_mean() -> None:
    """g = f9(f) is the same vector at every pixel: every similarity is s = |g|^2 / (|g| + 1e-5)^2, so each
    pixel becomes the spatial mean of the scores times hw*s / (hw*s + 1e-5) (spec G14)."""
    generator = torch.Generator().manual_seed(0)
    cam = torch.rand(2, 21, 5, 7, generator=generator)
    f = torch.randn(2, 195, 1, 1, generator=generator).expand(2, 195, 5, 7).contiguous()
    proj = nn.Conv2d(195, 192, 1, bias=False)
    out = pixel_correlation(cam, f, proj)
    g = proj(f[:, :, :1, :1]).flatten(1).double()                         # (2, 192)
    norm = g.norm(dim=1)
    s = norm ** 2 / (norm + 1e-5) ** 2
    hw = 35
    factor = (hw * s / (hw * s + 1e-5))[:, None, None, None]
    expected = cam.double().mean(dim=(2, 3), keepdim=True) * factor
    torch.testing.assert_close(out.double(), expected.expand_as(out), rtol=1e-5, atol=1e-6)


def test_pcm_resizes_the_scores_to_the_features() -> None:
    cam = torch.rand(1, 21, 3, 4)
    out = pixel_correlation(cam, torch.randn(1, 195, 6, 8), nn.Conv2d(195, 192, 1, bias=False))
    assert out.shape == (1, 21, 6, 8) and float(out.detach().min()) >= 0


def test_pcm_input_scores() -> None:
    """ReLU, / (max + 1e-5), background 1 - max, non-maximal foreground zeroed (ties kept), no label mask."""
    cam = torch.zeros(1, 21, 1, 3)
    cam[0, 0] = torch.tensor([5.0, 5.0, 5.0])           # the fc8 background channel is discarded
    cam[0, 1] = torch.tensor([2.0, 1.0, -1.0])
    cam[0, 2] = torch.tensor([1.0, 1.0, 0.0])
    out = pcm_input_scores(cam)
    n1 = (2.0 - 1e-5) / (2.0 + 1e-5)                     # class 1 at pixel 0 (its max)
    h1 = (1.0 - 1e-5) / (2.0 + 1e-5)                     # class 1 at pixel 1
    n2 = (1.0 - 1e-5) / (1.0 + 1e-5)                     # class 2 at pixels 0 and 1 (its max)
    torch.testing.assert_close(out[0, 1, 0], torch.tensor([n1, 0.0, 0.0]))      # below class 2 at pixel 1
    torch.testing.assert_close(out[0, 2, 0], torch.tensor([0.0, n2, 0.0]))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([1 - n1, 1 - n2, 1.0]))
    assert h1 < n2 and not out.requires_grad


# ----------------------------------------------------------------------------- loss helpers (spec G16)

def test_max_norm_hand_values() -> None:
    x = torch.tensor([[[[-1.0, 0.0], [1.0, 3.0]]]])
    expected = torch.tensor([[[[0.0, 0.0], [0.3333289, 0.9999933]]]])
    torch.testing.assert_close(max_norm(x), expected, rtol=1e-6, atol=1e-7)
    # a constant map and an all-negative map both normalise to 0
    assert torch.equal(max_norm(torch.full((1, 2, 3, 3), 2.0)), torch.zeros(1, 2, 3, 3))
    assert torch.equal(max_norm(-torch.rand(1, 1, 3, 3)), torch.zeros(1, 1, 3, 3))


def test_adaptive_min_pooling_hand_value() -> None:
    x = torch.tensor([[[[0.1, 0.9], [0.2, 0.0]], [[0.3, 0.1], [0.0, 0.4]]]])
    # per-pixel max [[0.3, 0.9], [0.2, 0.4]]; k = 4 // 4 = 1 smallest -> 0.2
    assert float(adaptive_min_pooling_loss(x)) == pytest.approx(0.2)
    # negatives are clipped: ReLU of the smallest maxima
    assert float(adaptive_min_pooling_loss(-x)) == 0.0


def test_max_onehot_keeps_ties_and_background_without_editing_its_input() -> None:
    x = torch.tensor([[[[0.5, 0.5]], [[0.2, 0.7]], [[0.6, 0.7]]]])
    before = x.clone()
    out = max_onehot(x)
    torch.testing.assert_close(out, torch.tensor([[[[0.5, 0.5]], [[0.0, 0.7]], [[0.6, 0.7]]]]))
    assert torch.equal(x, before)


def test_seam_losses_sanity() -> None:
    generator = torch.Generator().manual_seed(1)
    cam1, rv1 = torch.randn(2, 21, 40, 40, generator=generator), torch.rand(2, 21, 40, 40, generator=generator)
    cam2, rv2 = torch.randn(2, 21, 12, 12, generator=generator), torch.rand(2, 21, 12, 12, generator=generator)
    labels = torch.zeros(2, 20)
    labels[0, [0, 14]] = labels[1, 11] = 1
    out = seam_losses(cam1, rv1, cam2, rv2, labels)
    assert set(out) >= {'cls', 'er', 'ecr', 'loss'}
    torch.testing.assert_close(out['loss'], out['cls'] + out['er'] + out['ecr'])
    without = seam_losses(cam1, rv1, cam2, rv2, labels, min_pool=False)
    torch.testing.assert_close(out['cls'] - without['cls'], (out['rvmin1'] + out['rvmin2']) / 2)
    assert torch.equal(out['er'], without['er']) and torch.equal(out['ecr'], without['ecr'])


# ----------------------------------------------------------------------------- gradient routing

def branch_outputs(net: Net, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    img = torch.randn(2, 3, 48, 48, generator=generator)
    labels = torch.zeros(2, 20)
    labels[0, 3] = labels[1, 7] = labels[1, 14] = 1
    return train_seam.TwoBranches(net, 0.3)(img), labels


def grads_after(net: Net, loss: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    loss.backward()
    head_ids = {id(p) for p in net.trainable_parameters()[1]}
    backbone = {n: p.grad for n, p in net.named_parameters() if p.requires_grad and id(p) not in head_ids}
    heads = {n: p.grad for n, p in net.named_parameters() if id(p) in head_ids}
    return backbone, heads


def is_zero(grad) -> bool:
    return grad is None or not grad.abs().max() > 0


@pytest.mark.parametrize('term', ['ecr', 'rvmin'])
def test_ecr_and_min_pooling_train_only_the_pcm_head(term: str) -> None:
    net = tiny_net().train()
    (cam1, rv1, cam2, rv2), labels = branch_outputs(net)
    losses = seam_losses(cam1, rv1, cam2, rv2, labels)
    loss = losses['ecr'] if term == 'ecr' else losses['rvmin1'] + losses['rvmin2']
    backbone, heads = grads_after(net, loss)
    assert backbone and all(is_zero(g) for g in backbone.values()), [n for n, g in backbone.items() if not is_zero(g)]
    assert is_zero(heads['fc8.weight'])
    for name in ('f8_3.weight', 'f8_4.weight', 'f9.weight'):
        assert not is_zero(heads[name]), name


def test_classification_and_er_train_the_backbone_and_fc8_not_the_pcm() -> None:
    net = tiny_net().train()
    (cam1, rv1, cam2, rv2), labels = branch_outputs(net)
    losses = seam_losses(cam1, rv1, cam2, rv2, labels, min_pool=False)
    backbone, heads = grads_after(net, losses['cls'] + losses['er'])
    assert not is_zero(backbone['b7.conv_branch2b2.weight']) and not is_zero(backbone['b3.conv_branch2a.weight'])
    assert not is_zero(heads['fc8.weight'])
    assert is_zero(heads['fc8.weight'][0])          # the background row learns from nothing
    for name in ('f8_3.weight', 'f8_4.weight', 'f9.weight'):
        assert is_zero(heads[name]), name


# ----------------------------------------------------------------------------- a training step, inference

def test_one_training_step_on_cpu() -> None:
    net = tiny_net()
    cfg = parse_config(['--method', 'seam', '--profile', 'smoke'])
    optimizer, scheduler = torchutils.make_sgd(net.trainable_parameters(), 0.01, 0.0, max_step=10)
    generator = torch.Generator().manual_seed(0)
    label = torch.zeros(2, 20)
    label[0, 2] = label[1, 5] = 1
    batch = {'img': torch.randn(2, 3, 48, 48, generator=generator), 'label': label}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    stats = train_cam.train_one_epoch(train_seam.TwoBranches(net, 0.3), [batch], optimizer, scheduler, CPU, cfg,
                                      0, loss_fn=train_seam.seam_step_loss)
    assert stats['images'] == 2 and np.isfinite(stats['loss'])
    assert set(stats['parts']) == {'cls', 'er', 'ecr'} and all(np.isfinite(v) for v in stats['parts'].values())
    after = net.state_dict()
    for name in ('f9.weight', 'fc8.weight', 'b4.conv_branch2a.weight'):
        assert not torch.equal(before[name], after[name]), name


def test_cda_batches_go_through_both_branches_and_every_loss(monkeypatch) -> None:
    """A CDA batch (B/2 images + their B/2 pasted versions) is one batch of B for both branches and all losses."""
    net = tiny_net()
    cfg = parse_config(['--method', 'seam', '--profile', 'smoke'])
    seen = []
    real = train_seam.seam_losses

    def spy(cam1, cam_rv1, cam2, cam_rv2, labels, **kwargs):
        seen.append((cam1.shape[0], cam2.shape[0], labels.clone()))
        return real(cam1, cam_rv1, cam2, cam_rv2, labels, **kwargs)
    monkeypatch.setattr(train_seam, 'seam_losses', spy)
    generator = torch.Generator().manual_seed(0)
    label, aug_label = torch.zeros(2, 20), torch.zeros(2, 20)
    label[0, 2] = label[1, 5] = 1
    aug_label[0, [2, 11]] = aug_label[1, [5, 0]] = 1
    batch = {'img': torch.randn(2, 3, 48, 48, generator=generator), 'label': label,
             'aug_img': torch.randn(2, 3, 48, 48, generator=generator), 'aug_label': aug_label}
    optimizer, scheduler = torchutils.make_sgd(net.trainable_parameters(), 0.01, 0.0, max_step=10)
    stats = train_cam.train_one_epoch(train_seam.TwoBranches(net, 0.3), [batch], optimizer, scheduler, CPU, cfg,
                                      0, loss_fn=train_seam.seam_step_loss)
    assert stats['images'] == 4
    assert len(seen) == 1 and seen[0][:2] == (4, 4)
    assert torch.equal(seen[0][2], torch.cat([label, aug_label]))


def test_without_cda_equivariance_pasted_images_get_the_classification_loss_only(monkeypatch) -> None:
    """--no-cda_seam_equivariance: the downscaled branch and SEAM's losses see the originals only; the pasted
    half adds its full-size classification loss, the two halves averaged."""
    net = tiny_net().eval()          # fixed BN statistics: an image's outputs do not depend on its batch
    generator = torch.Generator().manual_seed(3)
    img = torch.randn(2, 3, 48, 48, generator=generator)
    label = torch.zeros(2, 20)
    label[0, [2, 11]] = label[1, 5] = 1
    model = train_seam.TwoBranches(net, 0.3)
    cfg = with_stage(parse_config(['--method', 'seam', '--profile', 'smoke']), 'cda')
    both, _ = train_seam.seam_step_loss(model, torch.cat([img, img]), torch.cat([label, label]), cfg)
    alone = seam_losses(*model(img), label)
    torch.testing.assert_close(both, alone['loss'])     # a batch of two identical halves: the halves' mean
    seen = []
    real = train_seam.seam_losses

    def spy(cam1, cam_rv1, cam2, cam_rv2, labels, **kwargs):
        seen.append((cam1.shape[0], cam2.shape[0]))
        return real(cam1, cam_rv1, cam2, cam_rv2, labels, **kwargs)
    monkeypatch.setattr(train_seam, 'seam_losses', spy)
    cfg = dataclasses.replace(cfg, cda_seam_equivariance=False)
    loss, parts = train_seam.seam_step_loss(model, torch.cat([img, img]), torch.cat([label, label]), cfg)
    assert seen == [(2, 2)]
    torch.testing.assert_close(loss, (alone['loss'] + alone['cls1']) / 2)
    assert parts['cls'] + parts['er'] + parts['ecr'] == pytest.approx(loss.item())
    baseline = parse_config(['--method', 'seam', '--profile', 'smoke', '--no-cda_seam_equivariance'])
    assert 'cda_seam_equivariance' not in train_seam.settings(baseline)
    assert 'cda_seam_equivariance' in train_seam.settings(cfg)
    assert 'cda_seam_equivariance' not in train_seam.settings(dataclasses.replace(cfg, cda_seam_equivariance=True))


def test_seam_normalize_quirks() -> None:
    fused = torch.zeros(3, 2, 2)
    fused[0] = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    fused[1] = torch.tensor([[2.0, 3.0], [-1.0, 6.0]])     # min over the image is 0 after clipping negatives
    out = make_cam_seam.seam_normalize(fused)
    torch.testing.assert_close(out[0], torch.tensor([[-1e-5 / 4.00001, (1 - 1e-5) / 4.00001],
                                                     [(2 - 1e-5) / 4.00001, (4 - 1e-5) / 4.00001]]))
    assert float(out[1, 1, 0]) == pytest.approx(-1e-5 / 6.00001)
    assert torch.equal(out[2], torch.full((2, 2), -1.0))   # an all-zero (absent) class comes out at -1


def test_compute_seam_cams_shapes_and_flip_fusion() -> None:
    net = tiny_net().eval()
    img = torch.randn(3, 40, 52)
    pyramid = [torch.stack([img, img.flip(-1)])]
    label = np.zeros(20, np.float32)
    label[[4, 9]] = 1
    keys, strided, high_res = make_cam_seam.compute_seam_cams(net, pyramid, label, (40, 52), CPU)
    assert keys.tolist() == [4, 9]
    assert high_res.shape == (2, 40, 52) and strided.shape == (2, 5, 7)
    assert high_res.max() <= 1 and high_res.dtype == np.float32


# ----------------------------------------------------------------------------- reference weights

def test_reference_seam_checkpoint_loads_through_cam_weights(tmp_path) -> None:
    """A file with resnet38_SEAM.Net's keys (here: a tiny net's, saved through DataParallel's `module.`) loads
    into net.resnet38_seam.Net; PSA's 20-class fc8 is refused with one line."""
    from misc.imutils import BadInputError
    from net.weights import load_reference_weights
    source = tiny_net(seed=1).state_dict()
    assert {'fc8.weight', 'f8_3.weight', 'f8_4.weight', 'f9.weight', 'conv1a.weight', 'bn7.running_var'} <= set(source)
    path = tmp_path / 'resnet38_SEAM.pth'
    torch.save({f'module.{k}': v for k, v in source.items()}, path)
    model = load_reference_weights(tiny_net(seed=2), 'net.resnet38_seam', path, '--cam_weights')
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key]), key
    source['fc8.weight'] = source['fc8.weight'][1:]
    torch.save(source, path)
    with pytest.raises(BadInputError, match='fc8.weight'):
        load_reference_weights(tiny_net(), 'net.resnet38_seam', path, '--cam_weights')


# ----------------------------------------------------------------------------- resume and DDP

def smoke_cfg(voc: Path, work: Path, *extra: str):
    return parse_config(['--method', 'seam', '--profile', 'smoke', '--voc12_root', str(voc), '--work_dir', str(work),
                         '--seed', '3', '--num_workers', '0', '--cam_num_epoches', '2', *extra])


def test_interrupted_training_resumes_to_the_same_weights(synthetic_voc, tmp_path, monkeypatch) -> None:
    torchutils.seed_everything(3)
    train_seam.run(smoke_cfg(synthetic_voc, tmp_path / 'straight'))

    real_epoch = train_cam.train_one_epoch

    def stop_in_second_epoch(*args, **kwargs):
        if args[6] == 1:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)
    monkeypatch.setattr(train_cam, 'train_one_epoch', stop_in_second_epoch)
    torchutils.seed_everything(3)
    with pytest.raises(KeyboardInterrupt):
        train_seam.run(smoke_cfg(synthetic_voc, tmp_path / 'killed'))
    monkeypatch.setattr(train_cam, 'train_one_epoch', real_epoch)
    torchutils.seed_everything(99)          # a fresh process: the checkpoint's RNG state must win
    train_seam.run(smoke_cfg(synthetic_voc, tmp_path / 'killed', '--resume'))

    a = torch.load(tmp_path / 'straight' / 'weights' / 'cam.pt', weights_only=False)['model']
    b = torch.load(tmp_path / 'killed' / 'weights' / 'cam.pt', weights_only=False)['model']
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


class _FixedStatistics(nn.Module):
    """Keeps the wrapped network in eval mode while training: BN uses its stored statistics and dropout is
    off, the two things that make per-process batches differ from one batch (trainable BN from scratch,
    dropout masks drawn per process); what is left is the loss and the gradient averaging under test."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.inner = net

    def train(self, mode: bool = True):
        super().train(mode)
        self.inner.eval()
        return self

    def forward(self, img):
        return self.inner(img)


def ddp_worker(out: Path) -> None:
    """Under torchrun (or alone): 2 SEAM steps on a fixed batch of 4, split over the processes."""
    torchutils.init_distributed(CPU)
    torch.manual_seed(0)
    net = Net(pretrained='none', width=WIDTH)
    cfg = parse_config(['--method', 'seam', '--profile', 'smoke'])
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 48, 48, generator=generator)
    labels = torch.zeros(4, 20)
    labels[0, 1] = labels[1, 4] = labels[2, 4] = labels[2, 9] = labels[3, 19] = 1
    world, rank = torchutils.world_size(), torchutils.rank()
    share = slice(rank * 4 // world, (rank + 1) * 4 // world)
    batches = [{'img': images[share], 'label': labels[share]}] * 2
    optimizer, scheduler = torchutils.make_sgd(net.trainable_parameters(), 0.05, 5e-4, max_step=4)
    model = torchutils.wrap_ddp(_FixedStatistics(train_seam.TwoBranches(net, 0.3)), CPU)
    train_cam.train_one_epoch(model, batches, optimizer, scheduler, CPU, cfg, 0, loss_fn=train_seam.seam_step_loss)
    if torchutils.is_main_process():
        torch.save(net.state_dict(), out)
    if torchutils.is_distributed():
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_match_one(tmp_path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    for name, launcher in (('one', [sys.executable]),
                           ('two', [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                    '--nproc_per_node=2'])):
        result = subprocess.run(launcher + [__file__, 'ddp-worker', str(tmp_path / f'{name}.pt')], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    a, b = torch.load(tmp_path / 'one.pt'), torch.load(tmp_path / 'two.pt')
    moved = torch.load(tmp_path / 'one.pt')
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    assert any(not torch.equal(v, tiny_net().state_dict()[k]) for k, v in moved.items() if k.endswith('weight'))


if __name__ == '__main__' and len(sys.argv) == 3 and sys.argv[1] == 'ddp-worker':
    ddp_worker(Path(sys.argv[2]))


def test_seam_runs_through_run_sample(synthetic_voc, tmp_path) -> None:
    """The smoke profile of --method seam, baseline pass, by the command line every user runs."""
    import json
    import run_sample
    work = tmp_path / 'work'
    code = run_sample.main(['--method', 'seam', '--profile', 'smoke', '--voc12_root', str(synthetic_voc),
                            '--work_dir', str(work), '--cda', 'false', '--num_workers', '0'])
    assert code == 0
    assert (work / 'weights' / 'cam.pt').is_file() and (work / 'weights' / 'aff.pt').is_file()
    records = sorted(p.stem for p in (work / 'fingerprints').glob('*.json'))
    assert records == sorted(['train_cam', 'make_cam', 'eval_cam', 'make_relation_labels', 'train_relation',
                              'make_sem_seg', 'eval_sem_seg', 'train_seg', 'make_seg', 'eval_seg'])
    config = json.loads((work / 'config.json').read_text())
    assert config['cam_network'] == 'net.resnet38_seam' and config['method'] == 'seam'
    for name in ('eval_cam', 'eval_sem_seg'):
        result = json.loads((work / 'metrics' / f'{name}.json').read_text())
        assert 0 <= result['miou'] <= 1 and len(result['iou']) == 21
