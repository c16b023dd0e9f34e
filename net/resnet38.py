"""ResNet-38 ("model A1" of Wu et al.), dilated to output stride 8, as AffinityNet (PSA) and SEAM use it.

Pre-activation residual units (BN -> ReLU -> conv), all convolutions bias-free. Levels 2-4 downsample
(stride 2 in the first unit of each), levels 5-7 keep stride 8 and dilate instead (2 in level 5, 4 in
the two bottleneck units b6 and b7). Module names follow the reference, so a state dict of this
network has exactly the keys of `psa/network/resnet38d.Net` (`conv1a.weight`, `b2.conv_branch1.weight`,
`b4_5.bn_branch2b1.running_var`, `bn7.weight`, ...).

Features (input N x 3 x H x W, h = ceil(H/8), w = ceil(W/8)):
  conv4  (N, 512, h, w)   ReLU(BN(output of b4_5)), the pre-activation of b5
  conv5  (N, 1024, h, w)  ReLU(BN(output of b5_2)), the pre-activation of b6
  conv6  (N, 4096, h, w)  ReLU(bn7(output of b7))

With ImageNet weights every BatchNorm is frozen (statistics and affine: FrozenBatchNorm2d, eps 1e-5)
and conv1a, b2, b2_1, b2_2 do not learn, as in the reference. `width` < 1 (CPU demo) scales every
channel count, keeps the topology, and uses trainable BatchNorm2d from scratch.

Weights (`--pretrained`): the ImageNet model is an MXNet file, `ilsvrc-cls_rna-a1_cls1000_ep-0001.params`
(itijyou/ademxapp), read here without MXNet (misc/mxnet_params.py), or a torch state dict converted from
it (the reference's key names). There is no torchvision ResNet-38, hence no download.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from misc.imutils import BadInputError
from misc.mxnet_params import PARAMS_FILE, load_resnet38_params
from net.weights import read_state_dict
WHERE_TO_GET = (f'get {PARAMS_FILE} from itijyou/ademxapp (the ImageNet "model A1"), or the converted ResNet-38 '
                'weights linked from the PSA/SEAM READMEs, and pass --pretrained PATH')
# the reference's freezing: these units keep their ImageNet weights
FROZEN_UNITS = ('conv1a', 'b2', 'b2_1', 'b2_2')
FEATURE_CHANNELS = {'conv4': 512, 'conv5': 1024, 'conv6': 4096}


class FrozenBatchNorm2d(torchvision.ops.FrozenBatchNorm2d):
    """torchvision's frozen BN (fixed statistics and affine, eps 1e-5) that also keeps the
    `num_batches_tracked` buffer of nn.BatchNorm2d, so its state dict has the reference's keys."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps=eps)
        self.register_buffer('num_batches_tracked', torch.tensor(0, dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # torchvision drops num_batches_tracked here; this class has the buffer, so load it as any other
        nn.Module._load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                                        unexpected_keys, error_msgs)


def _bn(channels: int, frozen: bool) -> nn.Module:
    return FrozenBatchNorm2d(channels) if frozen else nn.BatchNorm2d(channels, eps=1e-5)


class ResBlock(nn.Module):
    """Two 3x3 convolutions; projection shortcut (1x1, from the activated input) when the shape changes,
    else the raw input."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1, first_dilation: Optional[int] = None,
                 dilation: int = 1, frozen_bn: bool = True):
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = _bn(in_ch, frozen_bn)
        self.conv_branch2a = nn.Conv2d(in_ch, mid_ch, 3, stride, padding=first_dilation, dilation=first_dilation,
                                       bias=False)
        self.bn_branch2b1 = _bn(mid_ch, frozen_bn)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, ReLU(BN(x))): the second is the block's pre-activation, exposed as a feature."""
        activated = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(activated)
        r = self.conv_branch2a(activated)
        r = self.conv_branch2b1(F.relu(self.bn_branch2b1(r)))
        return shortcut + r, activated


class BottleneckBlock(nn.Module):
    """1x1 -> dilated 3x3 -> 1x1 (out/4, out/2, out channels), always a projection shortcut, and channel
    dropout before both the 3x3 and the last 1x1 (the PSA port's addition; off in eval mode)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, dropout: float = 0.0,
                 frozen_bn: bool = True):
        super().__init__()
        self.bn_branch2a = _bn(in_ch, frozen_bn)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, stride, bias=False)
        self.bn_branch2b1 = _bn(out_ch // 4, frozen_bn)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_ch // 4, out_ch // 2, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        self.bn_branch2b2 = _bn(out_ch // 2, frozen_bn)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        activated = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(activated)
        r = self.conv_branch2a(activated)
        r = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(r))))
        r = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(r))))
        return shortcut + r, activated


class ResNet38(nn.Module):
    """The backbone alone: `forward(x)` -> {'conv4', 'conv5', 'conv6'} (see the module docstring)."""

    def __init__(self, width: float = 1.0, frozen_bn: bool = True, dropout: bool = True):
        super().__init__()
        if not 0 < width <= 1:
            raise BadInputError(f'ResNet-38 width {width}: must be in (0, 1]')
        self.width, self.frozen_bn = width, frozen_bn

        def c(channels: int) -> int:   # bottleneck widths must stay divisible by 4
            return max(4, int(round(channels * width / 4)) * 4) if width < 1 else channels

        bn = dict(frozen_bn=frozen_bn)
        self.conv1a = nn.Conv2d(3, c(64), 3, padding=1, bias=False)
        self.b2 = ResBlock(c(64), c(128), c(128), stride=2, **bn)
        self.b2_1 = ResBlock(c(128), c(128), c(128), **bn)
        self.b2_2 = ResBlock(c(128), c(128), c(128), **bn)
        self.b3 = ResBlock(c(128), c(256), c(256), stride=2, **bn)
        self.b3_1 = ResBlock(c(256), c(256), c(256), **bn)
        self.b3_2 = ResBlock(c(256), c(256), c(256), **bn)
        self.b4 = ResBlock(c(256), c(512), c(512), stride=2, **bn)
        self.b4_1 = ResBlock(c(512), c(512), c(512), **bn)
        self.b4_2 = ResBlock(c(512), c(512), c(512), **bn)
        self.b4_3 = ResBlock(c(512), c(512), c(512), **bn)
        self.b4_4 = ResBlock(c(512), c(512), c(512), **bn)
        self.b4_5 = ResBlock(c(512), c(512), c(512), **bn)
        self.b5 = ResBlock(c(512), c(512), c(1024), first_dilation=1, dilation=2, **bn)
        self.b5_1 = ResBlock(c(1024), c(512), c(1024), dilation=2, **bn)
        self.b5_2 = ResBlock(c(1024), c(512), c(1024), dilation=2, **bn)
        self.b6 = BottleneckBlock(c(1024), c(2048), dilation=4, dropout=0.3 if dropout else 0.0, **bn)
        self.b7 = BottleneckBlock(c(2048), c(4096), dilation=4, dropout=0.5 if dropout else 0.0, **bn)
        self.bn7 = _bn(c(4096), frozen_bn)
        self.channels = {'conv4': c(512), 'conv5': c(1024), 'conv6': c(4096)}
        if frozen_bn:   # ImageNet weights: the early units keep them, as in the reference
            for name in FROZEN_UNITS:
                getattr(self, name).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, H, W) -> {'conv4' (N, 512w, h, w), 'conv5' (N, 1024w, h, w), 'conv6' (N, 4096w, h, w)}."""
        x = self.conv1a(x)
        for name in ('b2', 'b2_1', 'b2_2', 'b3', 'b3_1', 'b3_2', 'b4', 'b4_1', 'b4_2', 'b4_3', 'b4_4', 'b4_5'):
            x, _ = getattr(self, name)(x)
        x, conv4 = self.b5(x)
        x, _ = self.b5_1(x)
        x, _ = self.b5_2(x)
        x, conv5 = self.b6(x)
        x, _ = self.b7(x)
        return {'conv4': conv4, 'conv5': conv5, 'conv6': F.relu(self.bn7(x))}


# ----------------------------------------------------------------------------- weights

def width_of(state: Mapping[str, torch.Tensor]) -> float:
    """The width factor a ResNet-38 state dict was made with (from conv1a: 64 channels = 1)."""
    if 'conv1a.weight' not in state:
        raise BadInputError('not a ResNet-38 state dict: no conv1a.weight key')
    return state['conv1a.weight'].shape[0] / 64


UNITS = ('conv1a', 'b2', 'b2_1', 'b2_2', 'b3', 'b3_1', 'b3_2', 'b4', 'b4_1', 'b4_2', 'b4_3', 'b4_4', 'b4_5',
         'b5', 'b5_1', 'b5_2', 'b6', 'b7', 'bn7')
HEAD_PREFIXES = ('fc8.', 'f8_', 'f9.', 'fc.', 'linear')      # task heads of the PSA/SEAM networks


def load_backbone(model: ResNet38, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy the backbone tensors of `state` (reference key names) into `model` (a ResNet38 or a network
    built on it), strictly: every backbone tensor must be there with its shape (`num_batches_tracked` may
    be absent, as in a dict converted from MXNet) and nothing else may be; heads are the caller's business."""
    own = {k: v for k, v in model.state_dict().items() if k.split('.', 1)[0] in UNITS}
    required = [k for k in own if not k.endswith('num_batches_tracked')]
    missing = [k for k in required if k not in state]
    wrong = [f'{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})' for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    unexpected = [k for k in state if k not in own]
    if missing or wrong or unexpected:
        detail = (f'{len(missing)} missing (e.g. {missing[0]})' if missing else
                  f'{len(wrong)} mis-shaped (e.g. {wrong[0]})' if wrong else
                  f'{len(unexpected)} unexpected (e.g. {unexpected[0]})')
        raise BadInputError(f'{source}: not a ResNet-38 state dict with the reference key names: {detail}; '
                            f'{WHERE_TO_GET}')
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own if k in state}, strict=False)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a torch file (read with weights_only) or from the MXNet .params file
    (converted to the reference key names)."""
    path = Path(path)
    if path.suffix == '.params':
        return load_resnet38_params(path)
    return read_state_dict(path, '--pretrained')


def imagenet_weights_path() -> Path:
    """The .params file, or a converted state dict of the same name ending in .pth, in torch hub's checkpoints
    folder (~/.cache/torch/hub/checkpoints, or $TORCH_HOME/hub/checkpoints)."""
    hub = Path(torch.hub.get_dir()) / 'checkpoints'
    for name in (PARAMS_FILE, Path(PARAMS_FILE).with_suffix('.pth').name):
        if (hub / name).is_file():
            return hub / name
    raise BadInputError(f'--pretrained imagenet: there is no torchvision ResNet-38; {WHERE_TO_GET} '
                        f'(or put it in {hub})')


def load_pretrained(model: ResNet38, pretrained: str) -> None:
    """Load ImageNet weights into a width-1 ResNet38 (or a network built on it): `pretrained` imagenet (the
    file found in torch hub's checkpoints folder) or PATH (.params or converted state dict); head tensors
    in the file (fc8, f8_*, f9, the ImageNet classifier) are ignored."""
    path = imagenet_weights_path() if pretrained == 'imagenet' else Path(pretrained)
    state = read_weights(path)
    load_backbone(model, {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}, str(path))


def build_resnet38(pretrained: str, width: float = 1.0, load_weights: bool = True) -> ResNet38:
    """ResNet-38 with `pretrained` = imagenet (the .params found in torch hub's checkpoints folder), PATH
    (.params or converted state dict), or none (from scratch, trainable BN, any width).
    `load_weights=False` builds the same architecture for loading a checkpoint."""
    if pretrained == 'none':
        return ResNet38(width=width, frozen_bn=False)
    check_width(pretrained, width)
    model = ResNet38(width=1.0, frozen_bn=True)
    if load_weights:
        load_pretrained(model, pretrained)
    return model


def check_width(pretrained: str, width: float) -> None:
    if pretrained != 'none' and width != 1:
        raise BadInputError(f'ResNet-38 width {width} needs --pretrained none: ImageNet weights exist only at '
                            'width 1')


def features(state_dict: Mapping[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """ResNet-38 built from a state dict in the reference's key names (num_batches_tracked optional), in eval
    mode, run on x (N, 3, H, W) -> {'conv4', 'conv5', 'conv6'} at (ceil(H/8), ceil(W/8))."""
    width = width_of(state_dict)
    model = ResNet38(width=width, frozen_bn=True)
    load_backbone(model, state_dict, 'state dict')
    model.eval()
    with torch.no_grad():
        return model(x.float())


def feature_size(size: int) -> int:
    """Feature map side for an input side: three stride-2 convolutions (3x3, pad 1) = ceil(size / 8)."""
    return math.ceil(size / 8)
