"""PSA's CAM classifier: ResNet-38 (output stride 8), channel dropout 0.5 on conv6 in training, global
average pooling, bias-free 1x1 convolution 4096 -> num_classes (20 on VOC; `fc8`, Xavier-uniform initialised).

The state dict has the keys of `psa/network/resnet38_cls.Net` (backbone keys, `fc8.weight`), so the
reference's `res38_cls.pth` loads as it is (`--cam_weights`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.resnet38 import ResNet38, check_width, load_pretrained


class Net(ResNet38):
    """forward(x) -> (N, num_classes) logits; cam(x) -> (N, num_classes, h, w) ReLU'd class activation maps at stride 8."""

    def __init__(self, backbone: str = 'resnet38', pretrained: str = 'imagenet', load_weights: bool = True,
                 width: float = 1.0, dropout: bool = True, num_classes: int = 20):
        check_width(pretrained, width)
        frozen = pretrained != 'none'
        super().__init__(width=width, frozen_bn=frozen, dropout=dropout)
        self.dropout7 = nn.Dropout2d(0.5 if dropout else 0.0)
        self.fc8 = nn.Conv2d(self.channels['conv6'], num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        if load_weights and frozen:
            load_pretrained(self, pretrained)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> conv6 (N, 4096, ceil(H/8), ceil(W/8))."""
        return super().forward(x)['conv6']

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 20) class logits."""
        x = self.dropout7(self.features(x)).mean(dim=(2, 3), keepdim=True)
        return self.fc8(x).flatten(1)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 20, ceil(H/8), ceil(W/8)) class activation maps, ReLU'd (no dropout)."""
        return F.relu(F.conv2d(self.features(x), self.fc8.weight))

    @property
    def classifier(self) -> nn.Conv2d:
        """The 1x1 classifier, under the name the ResNet-50 CAM net uses."""
        return self.fc8

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone weights that learn, fc8): the lr and 10x lr groups (the reference's groups 0 and 2; its
        bias groups are empty, every convolution being bias-free)."""
        backbone = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith('fc8.')]
        return backbone, [self.fc8.weight]


def build(cfg, num_classes: int, load_weights: bool = True) -> Net:
    """The CAM network of a Config (`pretrained`, `backbone_width`, `cam_dropout`) with `num_classes` outputs."""
    return Net(pretrained=cfg.pretrained, load_weights=load_weights, width=cfg.backbone_width,
               dropout=cfg.cam_dropout, num_classes=num_classes)
