"""ResNet-38 backbone: topology, key names, freezing, features(), strict loading, the MXNet reader."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from misc import mxnet_params
from misc.imutils import BadInputError
from net import resnet38
from net.resnet38 import FrozenBatchNorm2d, ResNet38

TINY = 1 / 16     # 4 .. 256 channels: same topology, fast on CPU


def full_width_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device('meta'):
        model = ResNet38(width=1.0, frozen_bn=True)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random conv weights and BN statistics/affine, so that eval-mode BN is not an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith('num_batches_tracked'):
                continue
            if name.endswith('running_var') or (t.dim() == 1 and name.endswith('weight')):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.dim() == 1:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(1 / t[0].numel()))
    return model


def to_mxnet_name(key: str) -> str:
    """Inverse of the reference's conversion, to build a .params file like ademxapp's."""
    suffix = {'weight': 'gamma', 'bias': 'beta', 'running_mean': 'moving_mean', 'running_var': 'moving_var'}
    if key == 'conv1a.weight':
        return 'arg:conv1a_weight'
    module, *rest = key.split('.')
    if module == 'bn7':
        return ('aux:' if 'running' in rest[0] else 'arg:') + f'bn7_{suffix[rest[0]]}'
    level, _, k = module[1:].partition('_')
    unit = f'{level}a' if not k else f'{level}b{k}'
    layer, param = rest
    kind, branch = layer.split('_', 1)
    if kind == 'conv':
        return f'arg:res{unit}_{branch}_weight'
    return ('aux:' if 'running' in param else 'arg:') + f'bn{unit}_{branch}_{suffix[param]}'


# ----------------------------------------------------------------------------- topology

@pytest.mark.parametrize('size', [(17, 23), (32, 40), (9, 8)])
def test_feature_sizes_are_ceil_of_an_eighth(size):
    model = ResNet38(width=TINY, frozen_bn=False).eval()
    out = model(torch.zeros(1, 3, *size))
    h, w = math.ceil(size[0] / 8), math.ceil(size[1] / 8)
    assert resnet38.feature_size(size[0]) == h
    for name, channels in (('conv4', 32), ('conv5', 64), ('conv6', 256)):
        assert out[name].shape == (1, channels, h, w)
        assert model.channels[name] == channels
        assert (out[name] >= 0).all()          # ReLU'd pre-activations


def test_full_width_keys_are_the_references():
    shapes = full_width_shapes()
    convs = [k for k, s in shapes.items() if len(s) == 4]
    bns = {k.rsplit('.', 1)[0] for k in shapes if k.endswith('running_var')}
    assert len(convs) == 43 and len(bns) == 37 and len(shapes) == 43 + 37 * 5
    assert shapes['conv1a.weight'] == (64, 3, 3, 3)
    assert shapes['b2.conv_branch1.weight'] == (128, 64, 1, 1)
    assert shapes['b4_5.bn_branch2b1.running_var'] == (512,)
    assert shapes['b5.conv_branch2b1.weight'] == (1024, 512, 3, 3)
    assert shapes['b6.conv_branch2b2.weight'] == (2048, 1024, 1, 1)
    assert shapes['b7.conv_branch2b1.weight'] == (2048, 1024, 3, 3)
    assert shapes['bn7.weight'] == (4096,)
    assert 'b2_1.conv_branch1.weight' not in shapes and 'b5_1.conv_branch1.weight' not in shapes
    assert 'b2_2.bn_branch2a.num_batches_tracked' in shapes
    # the order the reference registers its modules in (its state dict order)
    assert list(shapes)[:7] == ['conv1a.weight', 'b2.bn_branch2a.weight', 'b2.bn_branch2a.bias',
                                'b2.bn_branch2a.running_mean', 'b2.bn_branch2a.running_var',
                                'b2.bn_branch2a.num_batches_tracked', 'b2.conv_branch2a.weight']
    n_params = sum(int(np.prod(s)) for k, s in shapes.items() if len(s) == 4)
    assert 100e6 < n_params < 110e6


def test_dilations_and_strides():
    with torch.device('meta'):
        model = ResNet38()
    assert model.b2.conv_branch2a.stride == (2, 2) and model.b4.conv_branch1.stride == (2, 2)
    assert model.b5.conv_branch2a.dilation == (1, 1) and model.b5.conv_branch2b1.dilation == (2, 2)
    assert model.b5_1.conv_branch2a.dilation == (2, 2)
    assert model.b6.conv_branch2b1.dilation == (4, 4) and model.b7.conv_branch2b1.padding == (4, 4)
    assert model.b6.dropout_2b1.p == 0.3 and model.b7.dropout_2b2.p == 0.5
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_pretrained_layout_freezes_bn_and_early_units():
    model = ResNet38(width=TINY, frozen_bn=True)
    bns = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(bns) == 37 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.split('.')[0] in resnet38.FROZEN_UNITS}
    assert 'b3.conv_branch2a.weight' in trainable and 'b7.conv_branch1.weight' in trainable
    assert all(bn.eps == 1e-5 for bn in bns)
    model.train()
    assert model.b7.dropout_2b1.training      # dropout follows the mode; BN has no mode to follow


def test_from_scratch_layout_trains_everything():
    model = ResNet38(width=TINY, frozen_bn=False)
    assert all(p.requires_grad for p in model.parameters())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 37


def test_frozen_bn_state_dict_round_trip():
    model = ResNet38(width=TINY, frozen_bn=True)
    state = model.state_dict()
    assert 'b3.bn_branch2a.num_batches_tracked' in state
    ResNet38(width=TINY, frozen_bn=True).load_state_dict(state)     # strict, num_batches_tracked included


# ----------------------------------------------------------------------------- features()

def test_features_equal_the_module_in_eval_mode():
    torch.manual_seed(0)
    model = randomise(ResNet38(width=TINY, frozen_bn=False)).eval()
    x = torch.randn(2, 3, 27, 35)
    with torch.no_grad():
        expected = model(x)
    out = resnet38.features(model.state_dict(), x)
    for name in ('conv4', 'conv5', 'conv6'):
        torch.testing.assert_close(out[name], expected[name], rtol=1e-4, atol=1e-5)
    # dropout is off and BN uses the stored statistics: the same input gives the same output
    torch.testing.assert_close(resnet38.features(model.state_dict(), x)['conv6'], out['conv6'])


def test_features_accept_a_dict_without_batch_counts():
    model = randomise(ResNet38(width=TINY, frozen_bn=False))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
    assert resnet38.features(state, torch.zeros(1, 3, 16, 16))['conv6'].shape == (1, 256, 2, 2)


@pytest.mark.parametrize('damage', ['missing', 'shape', 'unexpected', 'no_conv1a'])
def test_strict_loading_errors_are_one_line(damage):
    state = dict(ResNet38(width=TINY, frozen_bn=False).state_dict())
    if damage == 'missing':
        del state['b4_5.bn_branch2b1.running_var']
    elif damage == 'shape':
        state['b7.conv_branch1.weight'] = torch.zeros(3, 3, 1, 1)
    elif damage == 'unexpected':
        state['b8.conv.weight'] = torch.zeros(1)
    else:
        del state['conv1a.weight']
    with pytest.raises(BadInputError) as info:
        resnet38.features(state, torch.zeros(1, 3, 8, 8))
    message = str(info.value)
    assert '\n' not in message
    if damage != 'no_conv1a':
        assert 'state dict' in message and resnet38.PARAMS_FILE in message


# ----------------------------------------------------------------------------- weights files

def test_imagenet_without_a_file_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    with pytest.raises(BadInputError, match='ademxapp') as info:
        resnet38.build_resnet38('imagenet')
    assert resnet38.PARAMS_FILE in str(info.value) and '\n' not in str(info.value)


def test_imagenet_finds_the_file_in_the_hub_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    target = tmp_path / 'hub' / 'checkpoints' / resnet38.PARAMS_FILE
    target.write_bytes(b'')
    assert resnet38.imagenet_weights_path() == target


def test_reduced_width_needs_from_scratch():
    with pytest.raises(BadInputError, match='--pretrained none'):
        resnet38.build_resnet38('imagenet', width=0.5)
    assert not resnet38.build_resnet38('none', width=TINY).frozen_bn


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / 'odd.pth'
    torch.save({'conv1a.weight': torch.zeros(1), 'extra': object.__new__(_Opaque)}, path)
    with pytest.raises(BadInputError, match='weights_only'):
        resnet38.read_weights(path)


class _Opaque:
    pass


def test_converted_torch_file_loads(tmp_path):
    model = randomise(ResNet38(width=TINY, frozen_bn=False))
    path = tmp_path / 'res38.pth'
    torch.save({'module.' + k: v for k, v in model.state_dict().items()}, path)   # DataParallel prefix
    target = ResNet38(width=TINY, frozen_bn=True)
    resnet38.load_backbone(target, resnet38.read_weights(path), str(path))
    torch.testing.assert_close(target.state_dict()['b5.conv_branch2a.weight'], model.b5.conv_branch2a.weight)


# ----------------------------------------------------------------------------- MXNet .params

def test_mxnet_names_map_as_the_reference_does():
    cases = {'arg:conv1a_weight': 'conv1a.weight', 'arg:res2a_branch1_weight': 'b2.conv_branch1.weight',
             'arg:res2b1_branch2a_weight': 'b2_1.conv_branch2a.weight',
             'arg:bn4b5_branch2b1_gamma': 'b4_5.bn_branch2b1.weight',
             'aux:bn5a_branch2a_moving_var': 'b5.bn_branch2a.running_var',
             'arg:res6a_branch2b2_weight': 'b6.conv_branch2b2.weight', 'arg:bn7_beta': 'bn7.bias',
             'aux:bn7_moving_mean': 'bn7.running_mean', 'arg:linear1000_weight': None}
    for name, key in cases.items():
        assert mxnet_params.resnet38_torch_name(name) == key
    with pytest.raises(BadInputError):
        mxnet_params.resnet38_torch_name('arg:fc9_weight')


def test_all_full_width_names_round_trip():
    keys = [k for k in full_width_shapes() if not k.endswith('num_batches_tracked')]
    assert len(keys) == 191
    assert [mxnet_params.resnet38_torch_name(to_mxnet_name(k)) for k in keys] == keys


@pytest.mark.parametrize('version', [0, 1, 2])
def test_params_file_reads_back_and_loads(tmp_path, version):
    model = randomise(ResNet38(width=TINY, frozen_bn=False), seed=version)
    arrays = {to_mxnet_name(k): v.numpy() for k, v in model.state_dict().items()
              if not k.endswith('num_batches_tracked')}
    arrays['arg:linear1000_weight'] = np.ones((10, 256), np.float32)
    arrays['arg:linear1000_bias'] = np.zeros(10, np.float64)
    path = tmp_path / 'tiny.params'
    mxnet_params.write_params(path, arrays, version=version)
    read = mxnet_params.read_params(path)
    assert list(read) == list(arrays)
    for name in arrays:
        assert read[name].dtype == arrays[name].dtype
        np.testing.assert_array_equal(read[name], arrays[name])
    state = resnet38.read_weights(path)                    # .params: converted to the torch names
    assert len(state) == 191 - 0 and 'bn7.running_var' in state and not any('linear' in k for k in state)
    target = ResNet38(width=TINY, frozen_bn=True)
    resnet38.load_backbone(target, state, str(path))
    x = torch.randn(1, 3, 20, 20)
    torch.testing.assert_close(resnet38.features(target.state_dict(), x)['conv5'],
                               model.eval()(x)['conv5'], rtol=1e-4, atol=1e-5)


def test_params_reader_rejects_other_files(tmp_path):
    path = tmp_path / 'not.params'
    path.write_bytes(b'\x00' * 40)
    with pytest.raises(BadInputError, match='not an MXNet'):
        mxnet_params.read_params(path)
    mxnet_params.write_params(path, {'arg:conv1a_weight': np.ones((2, 3), np.float32)})
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(BadInputError, match='truncated'):
        mxnet_params.read_params(path)


def test_converter_writes_a_loadable_state_dict(tmp_path, capsys):
    model = randomise(ResNet38(width=TINY, frozen_bn=False))
    arrays = {to_mxnet_name(k): v.numpy() for k, v in model.state_dict().items()
              if not k.endswith('num_batches_tracked')}
    mxnet_params.write_params(tmp_path / 'a.params', arrays, version=0)
    assert mxnet_params.main([str(tmp_path / 'a.params'), str(tmp_path / 'a.pth')]) == 0
    assert '191 tensors' in capsys.readouterr().out
    target = ResNet38(width=TINY, frozen_bn=True)
    resnet38.load_backbone(target, resnet38.read_weights(tmp_path / 'a.pth'), 'a.pth')
    torch.testing.assert_close(target.state_dict()['b6.conv_branch2b1.weight'], model.b6.conv_branch2b1.weight)
