"""The segmentation network: shapes and output stride, weights files, the loss, the lr groups and schedule."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import FrozenBatchNorm2d

from misc.imutils import BadInputError
from net.deeplab import DeepLabV2, build_seg_network
from net.weights import load_deeplab
from step.train_seg import optimizer_groups, poly_step_lambda, resize_labels, seg_loss


def stride8(size: int) -> int:
    """Side of the logits of a side-`size` input: 7x7/2 conv (pad 3), 3x3/2 ceil-mode max-pool, stride 2 in layer3."""
    after_conv = (size - 1) // 2 + 1
    after_pool = -(-(after_conv - 1) // 2) + 1
    return (after_pool - 1) // 2 + 1


@pytest.fixture(scope='module')
def resnet101() -> DeepLabV2:
    torch.manual_seed(0)
    return DeepLabV2(num_classes=21)


def small(frozen_bn: bool = True, scales=(0.5, 0.75)) -> DeepLabV2:
    torch.manual_seed(0)
    return DeepLabV2(num_classes=21, depth=18, width=8, scales=scales, frozen_bn=frozen_bn)


# ----------------------------------------------------------------------------- network

def test_resnet101_layout_keys_and_output_stride(resnet101):
    model = resnet101
    # Caffe ResNet-101: the conv weight shapes of torchvision's ResNet-101 (same layers, stride moved)
    import torchvision
    ours = sorted(tuple(m.weight.shape) for n, m in model.base.named_modules()
                  if isinstance(m, nn.Conv2d) and not n.startswith('aspp'))
    theirs = sorted(tuple(m.weight.shape) for m in torchvision.models.resnet101().modules() if isinstance(m, nn.Conv2d))
    assert ours == theirs and len(ours) == 104
    block = model.base.layer3.block1
    assert block.reduce.conv.stride == (2, 2) and block.conv3x3.conv.stride == (1, 1)      # stride in the 1x1
    assert model.base.layer4.block1.conv3x3.conv.dilation == (2, 2)
    assert model.base.layer5.block3.conv3x3.conv.dilation == (4, 4)
    assert model.base.layer1.pool.ceil_mode
    assert [c.dilation for c in model.base.aspp.children()] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(isinstance(m, FrozenBatchNorm2d) for n, m in model.named_modules() if n.endswith('.bn'))
    keys = model.state_dict().keys()
    for key in ('base.layer1.conv1.conv.weight', 'base.layer2.block1.shortcut.bn.running_var',
                'base.layer4.block23.increase.conv.weight', 'base.aspp.c3.bias'):
        assert key in keys
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 49, 57))
    assert out.shape == (1, 21, stride8(49), stride8(57)) == (1, 21, 7, 8)


def test_training_returns_four_logits_and_bn_stays_frozen(resnet101):
    model = resnet101.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
    x = torch.randn(2, 3, 41, 41)
    with torch.no_grad():
        first, again = model(x), model(x)
    # 41 px: 1x -> 6, 0.5x (20 px) -> 3, 0.75x (30 px) -> 4, max at the 1x size
    assert [tuple(o.shape[-2:]) for o in first] == [(6, 6), (3, 3), (4, 4), (6, 6)]
    assert stride8(41) == 6 and stride8(20) == 3 and stride8(30) == 4
    small_up = F.interpolate(first[1], size=(6, 6), mode='bilinear', align_corners=False)
    mid_up = F.interpolate(first[2], size=(6, 6), mode='bilinear', align_corners=False)
    torch.testing.assert_close(first[3], torch.maximum(first[0], torch.maximum(small_up, mid_up)))
    for a, b in zip(first, again):                       # no batch statistics: the same twice
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    after = {k: v for k, v in model.state_dict().items() if 'running' in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), first[3])   # eval returns the max-fused logits


def test_small_network_strides_and_single_scale():
    model = small(frozen_bn=False, scales=()).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, 21, stride8(64), stride8(96)) == (1, 21, 9, 13)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())          # from scratch: trainable BN
    assert isinstance(model.train()(torch.zeros(2, 3, 32, 32)), list)


# ----------------------------------------------------------------------------- weights

def trained_dict(model: nn.Module, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


def test_init_file_loads_backbone_and_keeps_aspp():
    model = small()
    aspp = {k: v.clone() for k, v in model.state_dict().items() if '.aspp.' in k}
    full = trained_dict(model)
    init = {k[len('base.'):]: v for k, v in full.items() if '.aspp.' not in k}
    init['fc.weight'] = torch.zeros(91, 256, 1, 1)      # the pre-training classifier: dropped
    init['layer1.conv1.bn.num_batches_tracked'] = torch.tensor(0)
    load_deeplab(model, init)
    state = model.state_dict()
    assert torch.equal(state['base.layer1.conv1.conv.weight'], full['base.layer1.conv1.conv.weight'])
    assert torch.equal(state['base.layer5.block2.conv_b.bn.running_var'], full['base.layer5.block2.conv_b.bn.running_var'])
    assert all(torch.equal(state[k], v) for k, v in aspp.items())


def test_trained_file_loads_everything_and_refusals_name_the_tensor(tmp_path):
    from net.weights import read_state_dict
    model = small()
    full = trained_dict(model)
    path = tmp_path / 'msc.pth'
    torch.save(full, path)
    load_deeplab(model, read_state_dict(path, '--seg_weights'), f'--seg_weights {path}')
    assert all(torch.equal(model.state_dict()[k], v) for k, v in full.items())

    no_aspp = {k: v for k, v in full.items() if k != 'base.aspp.c2.weight'}
    with pytest.raises(BadInputError, match=r'--seg_weights .*msc.pth: trained MSC checkpoint: tensor '
                                            r'base.aspp.c2.weight missing'):
        load_deeplab(small(), no_aspp, f'--seg_weights {path}')
    wrong = dict(full, **{'base.layer1.conv1.conv.weight': torch.zeros(8, 3, 5, 5)})
    with pytest.raises(BadInputError, match=r'tensor base.layer1.conv1.conv.weight \(8, 3, 5, 5\), expected '
                                            r'\(8, 3, 7, 7\)'):
        load_deeplab(small(), wrong, 'f.pth')
    extra = dict(full, **{'base.layer9.conv.weight': torch.zeros(1)})
    with pytest.raises(BadInputError, match='unexpected tensor base.layer9.conv.weight'):
        load_deeplab(small(), extra, 'f.pth')
    missing_backbone = {k[5:]: v for k, v in full.items() if 'aspp' not in k and 'layer3.block1.conv_a' not in k}
    with pytest.raises(BadInputError, match='init file .*tensor base.layer3.block1.conv_a.conv.weight missing'):
        load_deeplab(small(), missing_backbone, 'init.pth')
    # a pickled object is refused by weights_only=True with one line naming the file
    bad = tmp_path / 'pickled.pth'
    torch.save({'model': full, 'extra': object()}, bad)
    with pytest.raises(BadInputError, match='pickled.pth: not loadable .*weights_only=True'):
        read_state_dict(bad, '--seg_weights')


def test_seg_pretrained_file_for_the_small_network_freezes_bn(tmp_path):
    path = tmp_path / 'init.pth'
    torch.save(trained_dict(small()), path)
    model = build_seg_network('deeplabv2_resnet18', 21, str(path), (), 8)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.equal(model.state_dict()['base.aspp.c0.bias'], torch.load(path)['base.aspp.c0.bias'])
    with pytest.raises(BadInputError, match='--seg_pretrained PATH'):
        build_seg_network('deeplabv2', 21, 'imagenet')


# ----------------------------------------------------------------------------- loss

def test_labels_resize_as_pil_nearest_and_the_loss_sums_per_output():
    labels = torch.arange(25).reshape(1, 5, 5) % 21             # every pixel its own class (mod 21)
    down = resize_labels(labels, (2, 2))
    # PIL's nearest samples the centre of each output pixel: rows/columns 1 and 3 of 5 (floor((i + 0.5) * 2.5));
    # F.interpolate's 'nearest' would take 0 and 2, a misalignment of one pixel
    assert down.tolist() == [[[6, 8], [16, 18]]]
    assert F.interpolate(labels[None].float(), size=(2, 2), mode='nearest').long()[0].tolist() == [[[0, 2], [10, 12]]]
    three = resize_labels(labels, (3, 3))
    assert three.tolist() == [[[0, 2, 4], [10, 12, 14], [20, 1, 3]]]    # rows/cols 0, 2, 4 (floor((i + .5) * 5/3))
    logits_2 = torch.zeros(1, 21, 2, 2)
    logits_3 = torch.zeros(1, 21, 3, 3)
    for (i, j), c in np.ndenumerate(down[0].numpy()):
        logits_2[0, c, i, j] = 4.0                                 # confident and right at PIL's positions
    full = torch.zeros(1, 21, 5, 5)
    loss = seg_loss([logits_2, logits_3, full], labels)
    right = -np.log(np.exp(4) / (np.exp(4) + 20))                   # CE of a logit 4 against twenty 0s
    uniform = np.log(21)
    assert float(loss) == pytest.approx(right + uniform + uniform, rel=1e-6)
    # ignored pixels leave the mean; a chunk without any labelled pixel adds 0, not NaN
    labels_ignored = labels.clone()
    labels_ignored[0, 1, 1] = 255                                   # one of the 2x2 samples
    assert float(seg_loss([logits_2], labels_ignored)) == pytest.approx(right, rel=1e-6)
    assert float(seg_loss([logits_2], torch.full((1, 5, 5), 255))) == 0.0


# ----------------------------------------------------------------------------- optimiser

def test_lr_groups_and_poly_schedule_values():
    model = small()
    groups = optimizer_groups(model, 2.5e-4, 5e-4)
    assert [(g['name'], g['lr'], g['weight_decay']) for g in groups] == [
        ('backbone', 2.5e-4, 5e-4), ('head_weight', 2.5e-3, 5e-4), ('head_bias', 5e-3, 0.0)]
    convs = [m for n, m in model.base.named_modules() if isinstance(m, nn.Conv2d) and n.startswith('layer')]
    assert len(groups[0]['params']) == len(convs) and len(groups[1]['params']) == len(groups[2]['params']) == 4
    assert {id(p) for g in groups for p in g['params']} == {id(p) for p in model.parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(groups, lr=2.5e-4, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_step_lambda(20000, 10))
    seen = {}
    for done in range(31):
        seen[done] = [g['lr'] for g in optimizer.param_groups]
        optimizer.step()
        scheduler.step()
    assert seen[0] == seen[9] == pytest.approx([2.5e-4, 2.5e-3, 5e-3])           # iterations 1..10: base lr
    assert seen[10][0] == pytest.approx(2.5e-4 * (1 - 10 / 20000) ** 0.9)          # updated every 10
    assert seen[19] == seen[10] and seen[20][0] == pytest.approx(2.5e-4 * (1 - 20 / 20000) ** 0.9)
    assert seen[25][2] == pytest.approx(5e-3 * (1 - 20 / 20000) ** 0.9)
    factor = poly_step_lambda(20000, 10)
    assert factor(10000) == pytest.approx(0.5 ** 0.9) and factor(10009) == factor(10000)
    assert factor(19999) == pytest.approx((10 / 20000) ** 0.9) and factor(20000) == 0.0
