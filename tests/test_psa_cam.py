"""PSA CAM network, colour jitter, CAM fusion, and the mapping of the reference repositories' weights."""
from __future__ import annotations

import importlib
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from misc.cda import ObjectBank
from misc.config import Config
from step.registry import parse_config
from misc.imutils import BadInputError
from net import resnet38_cls, weights
from net.resnet50_cam import Net as Res50Cam
from net.resnet50_irn import Net as Res50Irn
from step import make_cam_psa, make_object_bank
from voc12 import dataloader
from voc12.cda_dataset import CDAClassificationDataset

TINY = 1 / 16
JITTER = (0.3, 0.3, 0.3, 0.1)


def tiny_cam_net(seed: int = 0) -> resnet38_cls.Net:
    torch.manual_seed(seed)
    return resnet38_cls.Net(pretrained='none', width=TINY)


# ----------------------------------------------------------------------------- network

def test_cam_net_shapes_keys_and_groups():
    net = tiny_cam_net()
    assert net(torch.zeros(2, 3, 40, 40)).shape == (2, 20)
    assert net.cam(torch.zeros(1, 3, 33, 41)).shape == (1, 20, 5, 6)
    keys = list(net.state_dict())
    assert keys[0] == 'conv1a.weight' and keys[-1] == 'fc8.weight' and len(keys) == 229
    backbone, head = net.trainable_parameters()
    assert head == [net.fc8.weight] and all(p is not net.fc8.weight for p in backbone)
    assert len(backbone) + 1 == len(list(net.parameters()))               # from scratch: BN affine learns too
    bound = np.sqrt(6 / (256 + 20))                                        # xavier_uniform_, gain 1
    assert net.fc8.weight.abs().max() <= bound and net.fc8.bias is None


@pytest.mark.parametrize('module', ['net.resnet38_cls', 'net.resnet38_seam'])
def test_cam_dropout_switch(module):
    """--cam_dropout (default on, the reference's rates) drives every channel dropout of the ResNet-38 CAM
    nets; off, a training-mode forward is deterministic and the weights are the same tensors by name."""
    build = importlib.import_module(module).build
    cfg = parse_config(['--method', 'affinitynet', '--profile', 'smoke'])
    rates = lambda net: sorted(m.p for m in net.modules() if isinstance(m, torch.nn.Dropout2d))   # noqa: E731
    assert cfg.cam_dropout and rates(build(cfg, 20)) == [0.3, 0.3, 0.5, 0.5, 0.5]
    off = parse_config(['--method', 'affinitynet', '--profile', 'smoke', '--no-cam_dropout'])
    torch.manual_seed(0)
    net = build(off, 20).train()
    assert rates(net) == [0.0] * 5
    x = torch.rand(2, 3, 40, 40)
    first, second = net(x), net(x)
    for a, b in zip(first if isinstance(first, tuple) else (first,),
                    second if isinstance(second, tuple) else (second,)):
        assert torch.equal(a, b)
    assert list(net.state_dict()) == list(build(cfg, 20).state_dict())


def test_cam_net_with_imagenet_layout_freezes_the_reference_layers():
    with torch.device('meta'):
        net = resnet38_cls.Net(pretrained='imagenet', load_weights=False)
    backbone, head = net.trainable_parameters()
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    assert not any(n.startswith(('conv1a', 'b2.', 'b2_1', 'b2_2')) for n in names)
    assert len(backbone) == 35 and len(head) == 1


def test_cam_equals_the_classifier_on_features():
    net = tiny_cam_net().eval()
    x = torch.randn(1, 3, 24, 32)
    with torch.no_grad():
        logits = net(x)
        cams = F.conv2d(net.features(x), net.fc8.weight)       # before the ReLU: GAP and 1x1 commute
    torch.testing.assert_close(cams.mean(dim=(2, 3)), logits, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(net.cam(x), F.relu(cams))


# ----------------------------------------------------------------------------- colour jitter

def test_colour_jitter_follows_the_sample_generator():
    img = (np.random.default_rng(0).random((24, 30, 3)) * 255).astype(np.uint8)
    a = dataloader.color_jitter(img, np.random.default_rng(3), JITTER)
    b = dataloader.color_jitter(img, np.random.default_rng(3), JITTER)
    c = dataloader.color_jitter(img, np.random.default_rng(4), JITTER)
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(dataloader.color_jitter(img, np.random.default_rng(3), (0, 0, 0, 0)), img)


def test_brightness_factor_range():
    img = np.full((4, 4, 3), 100, np.uint8)
    values = {int(dataloader.color_jitter(img, np.random.default_rng(s), (0.3, 0, 0, 0))[0, 0, 0]) for s in range(60)}
    assert min(values) >= 70 and max(values) <= 130 and len(values) > 20


def test_classification_samples_repeat_with_jitter(synthetic_voc):
    ids = (synthetic_voc / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()[:4]
    labels = dataloader.load_image_labels(synthetic_voc, ids)
    make = lambda jitter: dataloader.ClassificationDataset(ids, synthetic_voc, labels, (48, 80), 64, seed=5,  # noqa
                                                           jitter=jitter)
    with_jitter, again, plain = make(JITTER), make(JITTER), make(None)
    assert torch.equal(with_jitter[1]['img'], again[1]['img'])
    assert not torch.equal(with_jitter[1]['img'], plain[1]['img'])
    with_jitter.set_epoch(1)
    assert not torch.equal(with_jitter[1]['img'], again[1]['img'])


def test_cda_pairs_are_jittered(synthetic_voc, tmp_path):
    cfg = Config(work_dir=tmp_path, voc12_root=synthetic_voc, cda_bank_source=synthetic_voc / 'SegmentationClass')
    make_object_bank.run(cfg)
    bank = ObjectBank.load(cfg.object_bank_dir)
    ids = (synthetic_voc / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()[:3]
    labels = dataloader.load_image_labels(synthetic_voc, ids)
    kw = dict(resize_long=(48, 80), crop_size=64, seed=2)
    jittered = CDAClassificationDataset(ids, synthetic_voc, labels, bank, jitter=JITTER, **kw)[0]
    plain = CDAClassificationDataset(ids, synthetic_voc, labels, bank, **kw)[0]
    assert jittered['aug_img'].shape == (3, 64, 64)
    assert torch.equal(jittered['aug_label'], plain['aug_label'])
    assert not torch.equal(jittered['img'], plain['img'])


def test_affinitynet_profiles():
    paper = parse_config(['--method', 'affinitynet', '--voc12_root', '.'])
    assert (paper.cam_crop_size, paper.cam_resize_long, paper.cam_batch_size, paper.cam_num_epoches) == \
        (448, (256, 512), 16, 15)
    assert (paper.cam_learning_rate, paper.cam_weight_decay, paper.cam_eval_thres) == (0.1, 5e-4, 0.2)
    assert paper.cam_scales == (1.0, 0.5, 1.5, 2.0) and paper.cam_color_jitter == JITTER
    assert paper.cam_network == 'net.resnet38_cls' and paper.backbone == 'resnet38' and paper.backbone_width == 1
    demo = parse_config(['--method', 'affinitynet'])
    assert demo.pretrained == 'none' and demo.backbone_width < 1 and demo.backbone == 'resnet38'
    with pytest.raises(SystemExit):
        parse_config(['--method', 'affinitynet', '--voc12_root', '.', '--backbone_width', '0.5'])


# ----------------------------------------------------------------------------- CAM fusion

def test_fusion_sums_scales_then_divides_by_the_class_max():
    outputs = [torch.full((2, 3, 4), 2.0), torch.full((2, 6, 7), 3.0)]
    outputs[1][1] = 0.0
    fused = make_cam_psa.fuse_psa(outputs, (9, 11))
    assert fused.shape == (2, 9, 11)
    torch.testing.assert_close(fused[0], torch.full((9, 11), 5 / (5 + 1e-5)))
    torch.testing.assert_close(fused[1], torch.full((9, 11), 2 / (2 + 1e-5)))
    ramp = torch.arange(4.0).repeat(1, 2, 1)                        # (1, 2, 4): 0 .. 3 along x
    fused = make_cam_psa.fuse_psa([ramp], (2, 8))
    assert float(fused.max()) == pytest.approx(1.0, abs=1e-5) and float(fused.min()) == 0.0


def test_pool_to_stride_on_a_hand_map():
    pooled = make_cam_psa.pool_to_stride(torch.ones(1, 9, 9))
    torch.testing.assert_close(pooled[0], torch.tensor([[1.0, 1 / 8], [1 / 8, 1 / 64]]))


def test_compute_cams_matches_the_reference_order_of_operations():
    """The reference upsamples each of the 2 x |scales| maps to H x W and flips back afterwards; here the
    flip-back comes first (on the small map): the same result."""
    net = tiny_cam_net(1).eval()
    size, keys = (21, 30), np.array([2, 11])
    img = torch.randn(3, *size)
    pyramid = []
    for scale in (1.0, 0.5, 1.5):
        scaled = F.interpolate(img[None], scale_factor=scale, mode='bilinear', align_corners=False)[0]
        pyramid.append(torch.stack([scaled, scaled.flip(-1)]))
    strided, high_res = make_cam_psa.compute_cams(net, pyramid, keys, size, torch.device('cpu'))
    total = torch.zeros(2, *size)
    with torch.no_grad():
        for pair in pyramid:
            for i in range(2):
                cam = F.interpolate(net.cam(pair[i:i + 1]), size, mode='bilinear', align_corners=False)[0]
                total += (cam.flip(-1) if i else cam)[keys]
    expected = total / (total.amax(dim=(1, 2), keepdim=True) + 1e-5)
    np.testing.assert_allclose(high_res, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert strided.shape == (2, 3, 4)
    np.testing.assert_allclose(strided[:, 0, 0], high_res[:, :8, :8].mean(axis=(1, 2)), rtol=1e-5)


# ----------------------------------------------------------------------------- reference weights

def as_irn_cam(state: dict) -> dict:
    """This project's ResNet CAM state dict -> the keys irn's resnet50_cam.Net saves (both copies)."""
    out = {}
    to_tv = {'stage1.0.': 'conv1.', 'stage1.1.': 'bn1.', 'stage1.4.': 'layer1.', 'stage2.': 'layer2.',
             'stage3.': 'layer3.', 'stage4.': 'layer4.'}
    for key, value in state.items():
        if key.startswith(('backbone.', 'newly_added.')):
            continue
        for ours, tv in to_tv.items():
            if key.startswith(ours):
                out['resnet50.' + tv + key[len(ours):]] = value
                out[re.sub(r'^(stage[234])\.', r'\1.0.', key)] = value
        if key.startswith('classifier.'):
            out[key] = value
    return out


def as_irn_irn(state: dict) -> dict:
    out = {}
    to_tv = {'stage1.0.': 'conv1.', 'stage1.1.': 'bn1.', 'stage2.': 'layer1.', 'stage3.': 'layer2.',
             'stage4.': 'layer3.', 'stage5.': 'layer4.'}
    for key, value in state.items():
        if key.startswith(('backbone.', 'edge_layers.', 'dp_layers.', 'mean_shift.')):
            continue
        for ours, tv in to_tv.items():
            if key.startswith(ours):
                out['resnet50.' + tv + key[len(ours):]] = value
                out[re.sub(r'^(stage[2345])\.', r'\1.0.', key)] = value
        if key.startswith(('fc_edge', 'fc_dp')):
            out[key] = value
    out['fc_dp7.4.running_var'] = torch.ones(2)
    out['fc_dp7.4.num_batches_tracked'] = torch.tensor(5)
    out['path_indices0'] = torch.zeros(3, 4, dtype=torch.long)
    out['ind_from'], out['ind_to'] = torch.zeros(1, 5, dtype=torch.long), torch.zeros(7, dtype=torch.long)
    return out


def randomised(model: torch.nn.Module, seed: int) -> dict:
    """A random state dict of `model`; a tensor registered under several names gets one value."""
    g = torch.Generator().manual_seed(seed)
    drawn: dict[int, torch.Tensor] = {}
    out = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) not in drawn:
            drawn[id(value)] = (torch.randn(value.shape, generator=g) if value.is_floating_point()
                                else value.detach().clone())
        out[key] = drawn[id(value)]
    return out


@pytest.mark.parametrize('only_stages', [False, True])
def test_irn_cam_weights_map_onto_this_project(tmp_path, only_stages):
    source = randomised(Res50Cam('resnet18', 'none', load_weights=False), 0)
    ref = as_irn_cam(source)
    if only_stages:
        ref = {k: v for k, v in ref.items() if not k.startswith('resnet50.')}
    assert 'stage2.0.0.conv1.weight' in ref and 'stage1.4.0.conv1.weight' in ref
    path = tmp_path / 'res50_cam.pth'
    torch.save({'module.' + k: v for k, v in ref.items()}, path)
    target = Res50Cam('resnet18', 'none', load_weights=False)
    weights.load_reference_weights(target, 'net.resnet50_cam', path, '--cam_weights')
    for key, value in target.state_dict().items():
        if not key.endswith('num_batches_tracked'):
            torch.testing.assert_close(value, source[key], msg=key)


def test_irn_irn_weights_map_onto_this_project(tmp_path):
    source = randomised(Res50Irn('resnet18', 'none', load_weights=False), 1)
    path = tmp_path / 'res50_irn.pth'
    torch.save(as_irn_irn(source), path)
    target = Res50Irn('resnet18', 'none', load_weights=False)
    weights.load_reference_weights(target, 'net.resnet50_irn', path, '--irn_weights')
    for key, value in target.state_dict().items():
        if not key.endswith('num_batches_tracked'):
            torch.testing.assert_close(value, source[key], msg=key)
    assert torch.equal(target.mean_shift.running_mean, source['fc_dp7.4.running_mean'])


def test_psa_cls_weights_load_as_they_are(tmp_path):
    source = randomised(tiny_cam_net(), 2)
    path = tmp_path / 'res38_cls.pth'
    torch.save(source, path)
    target = weights.load_reference_weights(tiny_cam_net(3), 'net.resnet38_cls', path, '--cam_weights')
    torch.testing.assert_close(target.fc8.weight, source['fc8.weight'])
    torch.testing.assert_close(target.state_dict()['b6.bn_branch2b2.running_var'],
                               source['b6.bn_branch2b2.running_var'])


def test_psa_aff_weights_load_as_they_are(tmp_path):
    from net.resnet38_aff import Net as AffNet
    torch.manual_seed(5)
    source = {k: v for k, v in randomised(AffNet(width=TINY), 5).items() if not k.endswith('num_batches_tracked')}
    assert {'f8_3.weight', 'f8_4.weight', 'f8_5.weight', 'f9.weight'} <= set(source)
    path = tmp_path / 'res38_aff.pth'
    torch.save(source, path)
    target = weights.load_reference_weights(AffNet(width=TINY), 'net.resnet38_aff', path, '--irn_weights')
    torch.testing.assert_close(target.f9.weight, source['f9.weight'])
    torch.testing.assert_close(target.state_dict()['bn7.running_mean'], source['bn7.running_mean'])


def test_mismatched_weights_give_one_line(tmp_path):
    path = tmp_path / 'res50_cam.pth'
    torch.save(as_irn_cam(Res50Cam('resnet18', 'none', load_weights=False).state_dict()), path)
    with pytest.raises(BadInputError) as info:
        weights.load_reference_weights(tiny_cam_net(), 'net.resnet38_cls', path, '--cam_weights')
    assert '--cam_weights' in str(info.value) and '\n' not in str(info.value)
    source = tiny_cam_net().state_dict()
    source['fc8.weight'] = torch.zeros(21, 256, 1, 1)                  # a SEAM-style 21-class head
    torch.save(source, path)
    with pytest.raises(BadInputError, match='mis-shaped'):
        weights.load_reference_weights(tiny_cam_net(), 'net.resnet38_cls', path, '--cam_weights')
    torch.save({'weights': [1, 2]}, path)
    with pytest.raises(BadInputError, match='not a tensor'):
        weights.read_state_dict(path, '--cam_weights')


def test_load_cam_model_uses_cam_weights(tmp_path, synthetic_voc):
    source = randomised(tiny_cam_net(), 4)
    path = tmp_path / 'res38_cls.pth'
    torch.save(source, path)
    cfg = parse_config(['--method', 'affinitynet', '--profile', 'smoke', '--backbone_width', str(TINY),
                        '--work_dir', str(tmp_path), '--voc12_root', str(synthetic_voc), '--cam_weights', str(path)])
    from step import make_cam, train_cam
    assert train_cam.run(cfg)['skipped']
    model = make_cam.load_cam_model(cfg, torch.device('cpu'))
    assert not model.training
    torch.testing.assert_close(model.fc8.weight, source['fc8.weight'])


# ----------------------------------------------------------------------------- the CAM slots end to end

def test_psa_cam_steps_baseline_and_cda(synthetic_voc, tmp_path):
    """train_cam, make_cam (PSA fusion), eval_cam, then the CDA pass's CAM training on the jittered pairs."""
    import json

    import run_sample
    code = run_sample.main(['--method', 'affinitynet', '--profile', 'smoke', '--voc12_root', str(synthetic_voc),
                            '--work_dir', str(tmp_path), '--cda_bank_source', str(synthetic_voc / 'SegmentationClass'),
                            '--steps', 'train_cam,make_cam,eval_cam,make_object_bank,cda_train_cam,cda_make_cam'])
    assert code == 0
    train_ids = (synthetic_voc / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()
    for stage in (tmp_path, tmp_path / 'cda'):
        state = torch.load(stage / 'weights' / 'cam.pt', weights_only=False)['model']
        assert 'fc8.weight' in state and 'b7.conv_branch2b2.weight' in state
        for image_id in train_ids[:4]:
            with np.load(stage / 'cam' / f'{image_id}.npz') as cam:
                keys, strided, high_res = cam['keys'], cam['cam'], cam['high_res']
            assert high_res.shape == (len(keys), 64, 64) and strided.shape == (len(keys), 8, 8)
            assert high_res.dtype == np.float32 and high_res.min() >= 0 and high_res.max() <= 1
    result = json.loads((tmp_path / 'metrics' / 'eval_cam.json').read_text())
    assert result['threshold'] == 0.5 and 0 <= result['miou'] <= 1
