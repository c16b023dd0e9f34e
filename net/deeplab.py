"""The final segmentation networks: DeepLab-v2 as the WSSS papers retrain it, and torchvision's DeepLabV3.

`DeepLabV2` follows kazuto1011/deeplab-pytorch's `DeepLabV2_ResNet101_MSC` (what IRNet, SEAM, PSA and CDA
report val/test figures with), written here from its description:

* a Caffe-style (MSRA) ResNet-101: stride in the first 1x1 conv of a bottleneck, not in its 3x3; a 7x7 stem
  whose 3x3 max-pool rounds up (ceil mode); layer4 and layer5 at stride 1 with dilation 2 and 4 (output
  stride 8); BatchNorm frozen (ImageNet or COCO statistics and affine), eps 1e-5 as the reference's BN;
* ASPP: the sum of four 3x3 convolutions with bias at rates 6, 12, 18, 24, initialised N(0, 0.01), bias 0;
* multi-scale inputs: the network runs on the image and on its bilinear 0.5x and 0.75x versions; in eval
  mode it returns the pixel-wise max of the three logits (the smaller two upsampled bilinearly to the 1x
  logits' size); in train mode the list [logits 1x, 0.5x, 0.75x, max], each of which gets a loss.

Input: mean-subtracted BGR without std (`voc12.seg_dataset.SEG_MEAN_BGR`), as the Caffe weights expect.

Module names follow the reference's checkpoints, so their state dicts load as they are (`base.layer1.conv1.
conv.weight`, `base.layer2.block1.reduce.bn.running_mean`, ..., `base.aspp.c3.bias`); see
`net.weights.load_deeplab`.

`DeepLabV2(depth=18, ...)` is the CPU demo's network: the same stem, stages, dilation and ASPP with basic
(two 3x3) blocks, trained from scratch with ordinary BatchNorm (frozen statistics of an untrained network
would be identities).

`TorchvisionDeepLabV3` wraps `torchvision.models.segmentation.deeplabv3_resnet50/101` (output stride 8, ASPP
rates 12/24/36 and image pooling, ImageNet-normalised RGB input) behind the same interface: eval -> logits,
train -> [logits].
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import FrozenBatchNorm2d

from misc.imutils import BadInputError

BN_EPS = 1e-5                 # the reference's BatchNorm eps (FrozenBatchNorm2d's default is the same)

_BLOCKS = {101: (3, 4, 23, 3), 50: (3, 4, 6, 3), 18: (2, 2, 2, 2)}

SEG_NETWORKS = ('deeplabv2', 'deeplabv2_resnet18', 'deeplabv3_resnet50', 'deeplabv3_resnet101')


class ConvBN(nn.Sequential):
    """conv (no bias) -> BN [-> ReLU]; children named `conv`, `bn`, `relu` as in the reference's files."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, relu: bool = True, norm: type = FrozenBatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, bias=False)
        self.bn = norm(out_ch, eps=BN_EPS)
        if relu:
            self.relu = nn.ReLU()


class CaffeBottleneck(nn.Module):
    """1x1 (carries the stride) -> 3x3 (dilated) -> 1x1 x4 channels, plus a projected shortcut in a stage's
    first block."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilation: int, project: bool, norm: type):
        super().__init__()
        mid = out_ch // 4
        self.reduce = ConvBN(in_ch, mid, 1, stride, norm=norm)
        self.conv3x3 = ConvBN(mid, mid, 3, 1, dilation, dilation, norm=norm)
        self.increase = ConvBN(mid, out_ch, 1, relu=False, norm=norm)
        self.shortcut = ConvBN(in_ch, out_ch, 1, stride, relu=False, norm=norm) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs (the first carries the stride; both dilated), plus a projected shortcut where the shape
    changes: the ResNet-18 blocks of the CPU demo's network."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilation: int, project: bool, norm: type):
        super().__init__()
        self.conv_a = ConvBN(in_ch, out_ch, 3, stride, dilation, dilation, norm=norm)
        self.conv_b = ConvBN(out_ch, out_ch, 3, 1, dilation, dilation, relu=False, norm=norm)
        self.shortcut = ConvBN(in_ch, out_ch, 1, stride, relu=False, norm=norm) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv_b(self.conv_a(x)) + self.shortcut(x))


def _stage(n_blocks: int, in_ch: int, out_ch: int, stride: int, dilation: int, bottleneck: bool,
           norm: type) -> nn.Sequential:
    """A stage of `n_blocks` blocks named block1..blockN; only the first strides and projects."""
    block = CaffeBottleneck if bottleneck else BasicBlock
    stage = nn.Sequential()
    for i in range(n_blocks):
        first = i == 0
        stage.add_module(f'block{i + 1}', block(in_ch if first else out_ch, out_ch, stride if first else 1,
                                                dilation, first and (bottleneck or in_ch != out_ch or stride != 1),
                                                norm))
    return stage


class ASPP(nn.Module):
    """DeepLab-v2's head: sum of parallel 3x3 convs with bias at the given atrous rates, straight to the
    class logits (children c0, c1, ...)."""

    def __init__(self, in_ch: int, num_classes: int, rates: Sequence[int]):
        super().__init__()
        for i, rate in enumerate(rates):
            conv = nn.Conv2d(in_ch, num_classes, 3, padding=rate, dilation=rate, bias=True)
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)
            self.add_module(f'c{i}', conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = iter(self.children())
        out = next(branches)(x)
        for conv in branches:
            out = out + conv(x)
        return out


class DilatedResNetASPP(nn.Module):
    """One scale of DeepLab-v2: (N, 3, H, W) -> (N, num_classes, ~H/8, ~W/8) logits.

    layer1 = stem (7x7/2 conv, 3x3/2 ceil-mode max-pool), layer2..layer5 = the four stages at strides
    1, 2, 1, 1 and dilations 1, 1, 2, 4."""

    def __init__(self, num_classes: int, depth: int, rates: Sequence[int], width: int, norm: type):
        super().__init__()
        bottleneck = depth != 18
        expand = 4 if bottleneck else 1
        chans = [width * expand * 2 ** i for i in range(4)]         # 256, 512, 1024, 2048 at width 64
        self.layer1 = nn.Sequential()
        self.layer1.add_module('conv1', ConvBN(3, width, 7, 2, 3, norm=norm))
        self.layer1.add_module('pool', nn.MaxPool2d(3, 2, 1, ceil_mode=True))
        in_ch = width
        for index, (n, out_ch, stride, dilation) in enumerate(zip(_BLOCKS[depth], chans, (1, 2, 1, 1),
                                                                  (1, 1, 2, 4))):
            self.add_module(f'layer{index + 2}', _stage(n, in_ch, out_ch, stride, dilation, bottleneck, norm))
            in_ch = out_ch
        self.aspp = ASPP(in_ch, num_classes, rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(x)
        x = self.layer5(self.layer4(self.layer3(self.layer2(x))))
        return self.aspp(x)


class DeepLabV2(nn.Module):
    """DeepLab-v2 with multi-scale inputs (see the module docstring).

    num_classes: output classes (21 on VOC); depth: 101 (the reference), 50, or 18 (basic blocks: the CPU
    demo); rates: ASPP atrous rates; scales: the extra input scales besides 1 (empty: one scale only);
    width: channels of the stem (64; the demo may narrow it); frozen_bn: FrozenBatchNorm2d (with loaded
    weights, as the reference trains) or ordinary BatchNorm2d (from scratch).
    """

    def __init__(self, num_classes: int = 21, depth: int = 101, rates: Sequence[int] = (6, 12, 18, 24),
                 scales: Sequence[float] = (0.5, 0.75), width: int = 64, frozen_bn: bool = True):
        super().__init__()
        if depth not in _BLOCKS:
            raise ValueError(f'DeepLabV2 depth {depth}: use one of {sorted(_BLOCKS)}')
        self.frozen_bn = frozen_bn
        self.scales = tuple(float(s) for s in scales)
        self.base = DilatedResNetASPP(num_classes, depth, rates, width,
                                      FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)

    def forward(self, x: torch.Tensor):
        logits = self.base(x)                                           # (N, C, h, w), the 1x scale
        if not self.scales:
            return [logits] if self.training else logits
        # The reference scales the input by the factor itself (floor of H * s), not to a computed size.
        pyramid = [self.base(F.interpolate(x, scale_factor=s, mode='bilinear', align_corners=False))
                   for s in self.scales]
        size = logits.shape[-2:]
        fused = torch.stack([logits] + [F.interpolate(p, size=size, mode='bilinear', align_corners=False)
                                        for p in pyramid]).max(dim=0).values
        return [logits] + pyramid + [fused] if self.training else fused

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The reference's three lr groups: 'backbone' (the conv weights of layer1..layer5; 1x lr), 'head_weight'
        (ASPP weights; 10x) and 'head_bias' (ASPP biases; 20x, no weight decay). From scratch, the trainable
        BatchNorm's weight and bias join the backbone group."""
        backbone = [m.weight for name, m in self.base.named_modules() if name.startswith('layer')
                    and isinstance(m, nn.Conv2d)]
        if not self.frozen_bn:
            backbone += [p for name, m in self.base.named_modules() if name.startswith('layer')
                         and isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
        aspp = [m for m in self.base.aspp.children()]
        return {'backbone': backbone, 'head_weight': [m.weight for m in aspp], 'head_bias': [m.bias for m in aspp]}


class TorchvisionDeepLabV3(nn.Module):
    """torchvision's DeepLabV3 behind DeepLabV2's interface: eval -> (N, C, ~H/8, ~W/8) logits, train ->
    [logits]: its backbone and head, without the final bilinear upsampling (the loop resizes the labels to the
    logits as for DeepLab-v2, and inference upsamples them itself). Its BN is ordinary (trainable) BatchNorm,
    as torchvision's reference trains it."""

    def __init__(self, arch: str, num_classes: int = 21, backbone_state: Optional[dict] = None):
        super().__init__()
        from torchvision.models import segmentation
        builder = {'deeplabv3_resnet50': segmentation.deeplabv3_resnet50,
                   'deeplabv3_resnet101': segmentation.deeplabv3_resnet101}[arch]
        self.net = builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
        if backbone_state is not None:
            own = self.net.backbone.state_dict()
            state = {k: v for k, v in backbone_state.items() if k in own}
            missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
            wrong = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
            if missing or wrong:
                raise BadInputError(f'--seg_pretrained: not a torchvision {arch.split("_")[1]} state dict '
                                    f'({len(missing)} missing, {len(wrong)} mis-shaped, e.g. {(missing or wrong)[0]})')
            self.net.backbone.load_state_dict(state, strict=False)

    def forward(self, x: torch.Tensor):
        out = self.net.classifier(self.net.backbone(x)['out'])
        return [out] if self.training else out

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """'backbone' (1x lr) and the classifier head: 'head_weight' (its conv weights, 10x) and 'head_bias' (its
        1-d parameters: biases and BN affine, 20x without weight decay): the DeepLab recipe applied to torchvision's
        head."""
        head = [(n, p) for n, p in self.net.classifier.named_parameters()]
        return {'backbone': list(self.net.backbone.parameters()),
                'head_weight': [p for n, p in head if p.ndim > 1],
                'head_bias': [p for n, p in head if p.ndim <= 1]}


def input_is_bgr_mean(network: str) -> bool:
    """Whether a network takes mean-subtracted BGR (DeepLab-v2, the Caffe convention) rather than ImageNet-
    normalised RGB (torchvision)."""
    return network.startswith('deeplabv2')


def build_seg_network(network: str, num_classes: int, pretrained: str, scales: Sequence[float] = (0.5, 0.75),
                      width: int = 64, load_weights: bool = True, rates: Sequence[int] = (6, 12, 18, 24)) -> nn.Module:
    """The network of `--seg_network`, with its initial weights where `load_weights`:

    deeplabv2           `pretrained` PATH: deeplab-pytorch's init file (deeplabv1_resnet101-imagenet.pth or the
                        COCO one), backbone loaded, ASPP at its own init; 'none': from scratch, trainable BN
    deeplabv2_resnet18  'none': from scratch (trainable BN), the CPU demo; PATH: a state dict of this network
                        (frozen BN)
    deeplabv3_resnet*   torchvision's builder; `pretrained` imagenet (torchvision weights API, cached in torch's
                        hub folder), PATH (a torchvision ResNet state dict, offline) or none
    `load_weights=False` builds the same architecture (BN kind included) to load a trained checkpoint into.
    """
    if network == 'deeplabv2':
        model = DeepLabV2(num_classes, 101, rates=rates, scales=scales, width=64, frozen_bn=pretrained != 'none')
        if load_weights and pretrained != 'none':
            from net.weights import load_deeplab, read_state_dict
            if pretrained == 'imagenet':
                raise BadInputError('--seg_network deeplabv2 needs --seg_pretrained PATH: deeplab-pytorch\'s init '
                                    'file (deeplabv1_resnet101-imagenet.pth, the fair-comparison ImageNet init, or '
                                    'deeplabv1_resnet101-coco.pth; see docs/segmentation.md), or none (from scratch); '
                                    'or use --seg_network deeplabv3_resnet101 with torchvision\'s ImageNet backbone')
            load_deeplab(model, read_state_dict(Path(pretrained), '--seg_pretrained'),
                         source=f'--seg_pretrained {pretrained}')
        return model
    if network == 'deeplabv2_resnet18':
        # from scratch (trainable BN), or from a file of the same network (frozen BN, as DeepLab-v2 with weights)
        model = DeepLabV2(num_classes, 18, rates=rates, scales=scales, width=width, frozen_bn=pretrained != 'none')
        if load_weights and pretrained not in ('none', 'imagenet'):
            from net.weights import load_deeplab, read_state_dict
            load_deeplab(model, read_state_dict(Path(pretrained), '--seg_pretrained'),
                         source=f'--seg_pretrained {pretrained}')
        elif load_weights and pretrained == 'imagenet':
            raise BadInputError('--seg_network deeplabv2_resnet18 has no ImageNet weights: use --seg_pretrained none '
                                '(from scratch) or PATH of a state dict of this network')
        return model
    if network in ('deeplabv3_resnet50', 'deeplabv3_resnet101'):
        state = None
        if load_weights and pretrained != 'none':
            import torchvision
            from net.backbone import _download_weights
            from net.weights import read_state_dict
            arch = network.split('_')[1]
            weights = {'resnet50': torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
                       'resnet101': torchvision.models.ResNet101_Weights.IMAGENET1K_V1}[arch]
            try:
                state = (_download_weights(weights) if pretrained == 'imagenet'
                         else read_state_dict(Path(pretrained), '--seg_pretrained'))
            except BadInputError as e:          # the CAM network's message, for this network's flag
                raise BadInputError(str(e).replace('--pretrained', '--seg_pretrained')) from None
        return TorchvisionDeepLabV3(network, num_classes, state)
    raise BadInputError(f'--seg_network {network}: unknown; use one of {", ".join(SEG_NETWORKS)}')
