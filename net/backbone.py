"""torchvision ResNet backbones at output stride 16 (layer4 with stride 1 and no dilation).

Weights are loaded explicitly (never inside a model constructor):
  imagenet  torchvision's weights API (IMAGENET1K_V1, the weights the reference used), cached in
            torch's hub cache (~/.cache/torch/hub/checkpoints, or $TORCH_HOME)
  none      random initialisation; BatchNorm is then trainable, since frozen statistics of an
            untrained network would make every BN layer an identity

With weights, BatchNorm is one of two kinds, as each reference network has it:
  frozen       statistics and affine fixed (torchvision's FrozenBatchNorm2d): the IRN backbone
  fixed_stats  statistics fixed (never updated, also in train() mode), affine weight and bias trainable
               parameters: the CAM network (IRNet's FixedBatchNorm)
  PATH      a torchvision ResNet state dict on disk (offline use), e.g. resnet50-0676ba61.pth
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from misc.imutils import BadInputError

_BUILDERS = {
    'resnet50': (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
    'resnet18': (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
}


class FixedStatsBatchNorm2d(FrozenBatchNorm2d):
    """BatchNorm with the stored statistics in every mode and a trainable affine weight and bias.

    It normalises exactly as FrozenBatchNorm2d and has the same state-dict keys; only `weight` and
    `bias` become parameters.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps)
        for name in ('weight', 'bias'):
            value = self._buffers.pop(name)
            setattr(self, name, nn.Parameter(value))


_NORM_LAYERS = {'frozen': FrozenBatchNorm2d, 'fixed_stats': FixedStatsBatchNorm2d}


def stage_channels(arch: str) -> tuple[int, int, int, int, int]:
    """Output channels of (stem, layer1, layer2, layer3, layer4)."""
    return (64, 256, 512, 1024, 2048) if arch == 'resnet50' else (64, 64, 128, 256, 512)


def build_resnet(arch: str, pretrained: str, load_weights: bool = True,
                 batch_norm: str = 'frozen') -> torchvision.models.ResNet:
    """A ResNet with layer4's stride set to 1 (output stride 16), weights loaded as `pretrained` says.

    `batch_norm` ('frozen' or 'fixed_stats') is the BN kind with weights; from scratch BN is always
    nn.BatchNorm2d. `load_weights=False` builds the same architecture (BN type included) for loading a
    checkpoint.
    """
    if arch not in _BUILDERS:
        raise BadInputError(f'--backbone {arch}: unknown; use one of {", ".join(_BUILDERS)}')
    builder, weights = _BUILDERS[arch]
    norm_layer = nn.BatchNorm2d if pretrained == 'none' else _NORM_LAYERS[batch_norm]
    model = builder(weights=None, norm_layer=norm_layer)
    block = model.layer4[0]
    strided_conv = block.conv2 if hasattr(block, 'conv3') else block.conv1   # Bottleneck vs BasicBlock
    strided_conv.stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    if not load_weights:
        return model
    if pretrained == 'imagenet':
        state = _download_weights(weights)
    elif pretrained != 'none':
        state = _read_weights(Path(pretrained))
    else:
        return model
    _load_backbone_state(model, state, arch, pretrained)
    return model


def _download_weights(weights) -> dict:
    try:
        return weights.get_state_dict(progress=True, check_hash=False)
    except Exception as e:  # no network, proxy, disk: all get the same actionable message
        file_name = Path(weights.url).name
        hub = Path(torch.hub.get_dir()) / 'checkpoints'
        raise BadInputError(f'cannot download ImageNet weights {weights.url} ({type(e).__name__}); offline, '
                            f'put {file_name} in {hub} or pass --pretrained PATH (or --pretrained none)') from None


def _read_weights(path: Path) -> dict:
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise BadInputError(f'--pretrained {path}: cannot read it as a PyTorch state dict ({type(e).__name__})') \
            from None
    if isinstance(state, dict) and 'model' in state and isinstance(state['model'], dict):
        state = state['model']
    if not isinstance(state, dict):
        raise BadInputError(f'--pretrained {path}: holds a {type(state).__name__}, not a state dict')
    return state


def _load_backbone_state(model: nn.Module, state: dict, arch: str, source: str) -> None:
    state = {k.removeprefix('module.'): v for k, v in state.items() if not k.removeprefix('module.').startswith('fc.')}
    own = model.state_dict()
    own = {k: v for k, v in own.items() if not k.startswith('fc.') and not k.endswith('num_batches_tracked')}
    missing = [k for k in own if k not in state]
    wrong_shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong_shape:
        example = (missing or wrong_shape)[0]
        raise BadInputError(f'--pretrained {source}: not a torchvision {arch} state dict ({len(missing)} missing, '
                            f'{len(wrong_shape)} mis-shaped tensors, e.g. {example}); pass {arch} weights or '
                            f'change --backbone')
    model.load_state_dict({k: state[k] for k in own}, strict=False)
