"""Optimisation: the poly schedule, SGD groups, and which parameters one CAM / IRN training step moves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from misc import torchutils
from misc.config import Config
from misc.indexing import PathIndex
from net import resnet50_cam, resnet50_irn
from step import train_cam, train_irn
from voc12.dataloader import GetAffinityLabelFromIndices

CPU = torch.device('cpu')


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer, by name."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module, prefix: str) -> dict[str, bool]:
    """name -> whether that tensor of `module` differs from `before`, for names under `prefix`."""
    after = module.state_dict()
    return {k: not torch.equal(before[k], after[k]) for k in before
            if k.startswith(prefix) and not k.endswith('num_batches_tracked')}


# ----------------------------------------------------------------------------- schedule and optimizer

def test_poly_lambda_decays_then_holds() -> None:
    factor = torchutils.poly_lambda(10)
    for t in range(10):
        assert factor(t) == pytest.approx((1 - t / 10) ** 0.9)
    assert factor(0) == 1.0
    # the reference stops updating at max_step: the lr stays at its last value, never reaches 0
    assert factor(10) == factor(11) == factor(1000) == pytest.approx(0.1 ** 0.9)
    assert torchutils.poly_lambda(20, power=2.0)(5) == pytest.approx(0.75 ** 2)


def test_make_sgd_groups_and_schedule() -> None:
    backbone, head = [torch.nn.Parameter(torch.ones(3))], [torch.nn.Parameter(torch.ones(2))]
    optimizer, scheduler = torchutils.make_sgd([backbone, head], lr=0.1, weight_decay=1e-4, max_step=4)
    assert isinstance(optimizer, torch.optim.SGD)
    groups = optimizer.param_groups
    assert len(groups) == 2
    assert [g['params'] for g in groups] == [backbone, head]
    assert [g['lr'] for g in groups] == pytest.approx([0.1, 1.0])
    # weight decay really is weight decay; momentum is 0 (the reference's positional slip gave 1e-4)
    assert all(g['weight_decay'] == 1e-4 and g['momentum'] == 0 for g in groups)
    lrs = []
    for _ in range(6):
        optimizer.step()
        scheduler.step()
        lrs.append([g['lr'] for g in groups])
    for step, (lr, lr10) in enumerate(lrs, start=1):
        expected = 0.1 * (1 - min(step, 3) / 4) ** 0.9
        assert lr == pytest.approx(expected) and lr10 == pytest.approx(10 * expected)


def test_make_sgd_applies_weight_decay_without_momentum() -> None:
    weight = torch.nn.Parameter(torch.full((1,), 2.0))
    optimizer, _ = torchutils.make_sgd([[weight]], lr=0.5, weight_decay=0.1, max_step=10, lr_multipliers=(1,))
    for _ in range(2):
        optimizer.zero_grad()
        (weight * 0).sum().backward()                 # zero gradient: only the decay moves it
        optimizer.step()
    # w <- w - lr * wd * w, twice; momentum would have made the second step larger
    assert float(weight.detach()) == pytest.approx(2.0 * (1 - 0.05) ** 2)


# ----------------------------------------------------------------------------- CAM network

def cam_batch(seed: int = 0, size: int = 64) -> dict:
    generator = torch.Generator().manual_seed(seed)
    label = torch.zeros(2, 20)
    label[0, 3] = label[1, 7] = label[1, 14] = 1
    return {'img': torch.randn(2, 3, size, size, generator=generator), 'label': label}


def train_cam_once(model: resnet50_cam.Net, lr: float = 0.1) -> dict:
    """One real `train_one_epoch` step (one batch) with weight decay 0, so a change means a gradient."""
    optimizer, scheduler = torchutils.make_sgd(model.trainable_parameters(), lr, 0.0, max_step=10)
    stats = train_cam.train_one_epoch(model, [cam_batch()], optimizer, scheduler, CPU, Config(), epoch=0)
    assert stats['images'] == 2 and np.isfinite(stats['loss'])
    # the scheduler was stepped once per iteration
    assert optimizer.param_groups[0]['lr'] == pytest.approx(lr * 0.9 ** 0.9)
    return stats


def test_cam_from_scratch_trains_every_layer() -> None:
    torch.manual_seed(0)
    model = resnet50_cam.Net(backbone='resnet18', pretrained='none')
    backbone, head = model.trainable_parameters()
    assert len(backbone) + len(head) == len(list(model.parameters()))
    assert all(p.requires_grad for p in model.parameters())
    before = snapshot(model)
    train_cam_once(model)
    moved = {k: v for k, v in changed(before, model, '').items() if not k.endswith(('running_mean', 'running_var'))}
    assert moved and all(moved.values()), [k for k, v in moved.items() if not v]


def test_cam_from_pretrained_file_freezes_early_layers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / 'resnet18.pth'
    reference = torchvision.models.resnet18().state_dict()
    torch.save(reference, path)
    model = resnet50_cam.Net(backbone='resnet18', pretrained=str(path))
    # the file's weights were loaded (conv1 is stage1.0; layer1 is stage1.4; layer3 is stage3)
    assert torch.equal(model.stage1[0].weight, reference['conv1.weight'])
    assert torch.equal(model.stage1[4][0].conv1.weight, reference['layer1.0.conv1.weight'])
    assert torch.equal(model.stage3[1].conv2.weight, reference['layer3.1.conv2.weight'])
    assert torch.equal(model.stage1[1].running_var, reference['bn1.running_var'])
    assert not any(p.requires_grad for p in model.stage1.parameters())
    assert not any(p.requires_grad for p in model.stage2.parameters())
    backbone, head = model.trainable_parameters()
    assert {id(p) for p in backbone} == {id(p) for p in [*model.stage3.parameters(), *model.stage4.parameters()]}
    assert [id(p) for p in head] == [id(model.classifier.weight)]

    before = snapshot(model)
    train_cam_once(model)
    for frozen in ('stage1.', 'stage2.'):       # conv1, bn1, layer1, layer2 (weights and BN statistics)
        moved = changed(before, model, frozen)
        assert moved and not any(moved.values()), [k for k, v in moved.items() if v]
    for learning in ('stage3.', 'stage4.', 'classifier.'):
        # convolutions and the BN scale and shift learn (the reference's FixedBatchNorm) ...
        moved = {k: v for k, v in changed(before, model, learning).items() if k.endswith(('weight', 'bias'))}
        assert moved and all(moved.values()), [k for k, v in moved.items() if not v]
        # ... while the BN statistics stay the ImageNet ones, although the model is in train() mode
        stats = {k: v for k, v in changed(before, model, learning).items() if 'running_' in k}
        assert learning == 'classifier.' or (stats and not any(stats.values()))
    bn_affine = [name for name, p in model.named_parameters() if p.requires_grad and name.endswith('bn1.weight')]
    assert bn_affine and all(name.startswith(('stage3.', 'stage4.')) for name in bn_affine)
    assert all(p.grad is None for p in model.stage1.parameters())


def test_cam_bn_uses_stored_statistics_in_train_mode(tmp_path: Path) -> None:
    path = tmp_path / 'resnet18.pth'
    torch.save(torchvision.models.resnet18().state_dict(), path)
    model = resnet50_cam.Net(backbone='resnet18', pretrained=str(path))
    bn = model.stage3[0].bn1
    bn.running_mean.fill_(0.5)
    bn.running_var.fill_(4.0)
    x = torch.randn(2, bn.weight.numel(), 3, 3) * 7 + 2
    expected = (x - 0.5) / torch.sqrt(torch.tensor(4.0) + bn.eps) * bn.weight.view(1, -1, 1, 1) \
        + bn.bias.view(1, -1, 1, 1)
    for mode in (True, False):
        model.train(mode)
        torch.testing.assert_close(bn(x), expected)
    assert bn.weight.requires_grad and bn.bias.requires_grad


def test_cam_shapes() -> None:
    model = resnet50_cam.Net(backbone='resnet18', pretrained='none').eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 80)
        assert model(x).shape == (1, 20)
        assert model.features(x).shape == (1, 512, 4, 5)          # output stride 16
        cam = model.cam(x)
    assert cam.shape == (1, 20, 4, 5) and float(cam.min()) >= 0


# ----------------------------------------------------------------------------- IRN

IRN_CROP = 96   # 24 x 24 at stride 4: the smallest multiple of 16 whose map holds radius-10 pairs


def affinity_labels(path_index: PathIndex) -> list[torch.Tensor]:
    """Pair labels of a (crop/4)^2 map: background left, class 5 right, an ignored band between."""
    side = IRN_CROP // 4
    label = np.zeros((side, side), np.uint8)
    label[:, side // 2:] = 5
    label[:, side // 2 - 1] = 255
    labels = GetAffinityLabelFromIndices(path_index.src_indices, path_index.dst_indices)(label)
    return [t[None].repeat(2, 1, 1) for t in labels]


def test_irn_step_trains_only_the_branches() -> None:
    torch.manual_seed(0)
    net = resnet50_irn.Net(backbone='resnet18', pretrained='none')
    path_index = PathIndex(radius=10, default_size=(IRN_CROP // 4, IRN_CROP // 4))
    loss_model = resnet50_irn.AffinityDisplacementLoss(net, path_index)
    bg_pos, fg_pos, neg = affinity_labels(path_index)
    assert bg_pos.sum() > 0 and fg_pos.sum() > 0 and neg.sum() > 0

    # the loss terms have the pair shapes the labels have
    with torch.no_grad():
        pos_aff, neg_aff, dp_fg, dp_bg = loss_model(torch.randn(2, 3, IRN_CROP, IRN_CROP))
    assert pos_aff.shape == neg_aff.shape == bg_pos.shape
    assert dp_fg.shape == dp_bg.shape == (2, 2) + bg_pos.shape[1:]

    batch = {'img': torch.randn(2, 3, IRN_CROP, IRN_CROP), 'aff_bg_pos_label': bg_pos,
             'aff_fg_pos_label': fg_pos, 'aff_neg_label': neg}
    optimizer, scheduler = torchutils.make_sgd(net.trainable_parameters(), 0.1, 0.0, max_step=10)
    edge_params, dp_params = net.trainable_parameters()
    assert len(edge_params) + len(dp_params) == sum(p.requires_grad for p in net.parameters())
    before = snapshot(net)
    stats = train_irn.train_one_epoch(loss_model, [batch], optimizer, scheduler, CPU, Config(), epoch=0)
    assert stats['images'] == 2
    assert all(np.isfinite(stats[k]) and stats[k] > 0 for k in ('pos_aff', 'neg_aff', 'dp_fg', 'dp_bg'))

    # backbone weights and BN statistics did not move (train() keeps the backbone in eval mode)
    for prefix in ('stage1.', 'stage2.', 'stage3.', 'stage4.', 'stage5.'):
        moved = changed(before, net, prefix)
        assert moved and not any(moved.values()), [k for k, v in moved.items() if v]
    assert all(p.grad is None for p in net.backbone.parameters())
    for prefix in ('fc_edge', 'fc_dp'):
        moved = {k: v for k, v in changed(before, net, prefix).items() if not k.endswith('running_mean')}
        assert moved and all(moved.values()), [k for k, v in moved.items() if not v]
    assert not any(changed(before, net, 'mean_shift.').values())


def test_irn_fine_tuned_backbone_from_scratch_learns(tmp_path: Path) -> None:
    """--irn_backbone_lr_mult > 0 (from scratch): the backbone, copied from the CAM network, gets its own
    lr group, receives gradients, moves (weights and BN statistics), and train() keeps its BN in training."""
    torch.manual_seed(0)
    cfg = Config(work_dir=tmp_path, backbone='resnet18', pretrained='none', irn_backbone_lr_mult=0.5)
    cam = resnet50_cam.Net(backbone='resnet18', pretrained='none')
    torchutils.save_checkpoint(cfg.weights_dir / 'cam.pt', model=cam.state_dict())
    net = train_irn.build_model(cfg)
    assert net.train_backbone and all(p.requires_grad for p in net.backbone.parameters())
    assert torch.equal(net.stage3[0].conv1.weight, cam.stage2[0].conv1.weight)    # layer2 copied from the CAM net
    net.train()
    assert all(m.training for m in net.backbone.modules())

    path_index = PathIndex(radius=10, default_size=(IRN_CROP // 4, IRN_CROP // 4))
    loss_model = resnet50_irn.AffinityDisplacementLoss(net, path_index)
    bg_pos, fg_pos, neg = affinity_labels(path_index)
    batch = {'img': torch.randn(2, 3, IRN_CROP, IRN_CROP), 'aff_bg_pos_label': bg_pos,
             'aff_fg_pos_label': fg_pos, 'aff_neg_label': neg}
    optimizer, scheduler = train_irn.make_optimizer(net, cfg, max_step=10)
    assert [g['lr'] for g in optimizer.param_groups] == pytest.approx([0.1, 1.0, 0.05])
    assert len(optimizer.param_groups[2]['params']) == len(list(net.backbone.parameters()))
    before = snapshot(net)
    train_irn.train_one_epoch(loss_model, [batch], optimizer, scheduler, CPU, cfg, epoch=0)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone.parameters())
    for prefix in ('stage1.', 'stage2.', 'stage3.', 'stage4.', 'stage5.', 'fc_edge', 'fc_dp'):
        moved = {k: v for k, v in changed(before, net, prefix).items() if not k.endswith('.running_mean')
                 or k.startswith('stage')}     # the mean shift is measured after training, not learnt
        assert moved and all(moved.values()), [k for k, v in moved.items() if not v]


def test_irn_backbone_stays_frozen_with_imagenet_weights(tmp_path: Path) -> None:
    """With weights (ImageNet or a file) the IRN is the reference's: frozen backbone, two lr groups."""
    weights = tmp_path / 'resnet18.pth'
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    cfg = Config(work_dir=tmp_path, backbone='resnet18', pretrained=str(weights))
    net = train_irn.build_model(cfg)
    assert not net.train_backbone and not any(p.requires_grad for p in net.backbone.parameters())
    assert net.backbone_parameters() == []
    optimizer, _ = train_irn.make_optimizer(net, cfg, max_step=10)
    assert [g['lr'] for g in optimizer.param_groups] == pytest.approx([0.1, 1.0])
    net.train()
    assert not any(m.training for m in net.backbone.modules())


def test_irn_train_mode_keeps_backbone_in_eval() -> None:
    net = resnet50_irn.Net(backbone='resnet18', pretrained='none')
    loss_model = resnet50_irn.AffinityDisplacementLoss(net, PathIndex(radius=10, default_size=(24, 24)))
    for train_call in (net.train, loss_model.train):       # directly, and through the wrapping module
        net.eval()
        assert train_call() is not None
        assert net.training
        assert not any(m.training for m in net.backbone.modules())
        assert all(m.training for m in net.edge_layers.modules())
        assert all(m.training for m in net.dp_layers.modules())
    net.train(False)
    assert not any(m.training for m in net.modules())


def test_irn_output_shapes() -> None:
    net = resnet50_irn.Net(backbone='resnet18', pretrained='none').eval()
    with torch.no_grad():
        edge, dp = net(torch.randn(1, 3, 96, 112))
    assert edge.shape == (1, 1, 24, 28) and dp.shape == (1, 2, 24, 28)


def test_mean_shift_applies_in_eval_only() -> None:
    shift = resnet50_irn.MeanShift(2)
    shift.running_mean.copy_(torch.tensor([1.5, -2.0]))
    x = torch.randn(3, 2, 4, 5)
    assert torch.equal(shift.train()(x), x)
    out = shift.eval()(x)
    assert torch.allclose(out[:, 0], x[:, 0] - 1.5) and torch.allclose(out[:, 1], x[:, 1] + 2.0)

    # inside the IRN: the displacement output moves by exactly the stored mean in eval mode
    torch.manual_seed(0)
    net = resnet50_irn.Net(backbone='resnet18', pretrained='none').eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, dp0 = net(image)
        net.mean_shift.running_mean.copy_(torch.tensor([0.5, -0.25]))
        _, dp1 = net(image)
        net.train()
        _, dp_train = net(image)
    assert torch.allclose(dp0 - dp1, torch.tensor([0.5, -0.25]).view(1, 2, 1, 1).expand_as(dp0), atol=1e-6)
    assert torch.allclose(dp_train, dp0, atol=1e-5)      # training output ignores the shift
    assert 'mean_shift.running_mean' in net.state_dict()  # saved with the weights


# ----------------------------------------------------------------------------- validation interval, CPU pools

@pytest.mark.parametrize('num_workers', ['0', '1'])
def test_cam_validation_interval_leaves_the_weights_and_random_state_as_they_were(tmp_path: Path, synthetic_voc,
                                                                                  num_workers) -> None:
    # the random state after train_cam is where the next network's initial weights come from
    from step.registry import parse_config
    results, states = {}, {}
    for interval in (1, 2):
        cfg = parse_config(['--profile', 'smoke', '--work_dir', str(tmp_path / str(interval)), '--voc12_root',
                            str(synthetic_voc), '--cam_num_epoches', '3', '--cam_val_interval', str(interval),
                            '--num_workers', num_workers])
        torchutils.seed_everything(cfg.seed)              # as run_sample.py does: the same initial weights
        result = train_cam.run(cfg)
        states[interval] = (torch.get_rng_state(), np.random.get_state()[1].copy())
        weights = torchutils.load_checkpoint(cfg.weights_dir / 'cam.pt')['model']
        results[interval] = ([e['epoch'] for e in result['epochs'] if 'val_loss' in e], weights)
    assert results[1][0] == [1, 2, 3]
    assert results[2][0] == [2, 3]                        # every second epoch, and always the last
    assert all(torch.equal(results[1][1][k], results[2][1][k]) for k in results[1][1])
    assert torch.equal(states[1][0], states[2][0]) and np.array_equal(states[1][1], states[2][1])


def test_cpu_pools_take_every_core_shared_by_the_ranks_of_a_node(monkeypatch) -> None:
    from step import common
    monkeypatch.setattr(common.os, 'sched_getaffinity', lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    assert common.cpu_workers(Config(num_workers=1)) == 8
    assert common.cpu_workers(Config(num_workers=12)) == 12       # more asked for: as asked
    assert common.cpu_workers(Config(num_workers=0)) == 0         # in this process
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')
    assert common.cpu_workers(Config(num_workers=1)) == 2
