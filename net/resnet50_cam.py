"""The CAM classifier: ResNet (output stride 16), global average pooling, bias-free 1x1 conv -> num_classes."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.backbone import build_resnet, stage_channels


class Net(nn.Module):
    """Image-level classifier whose 1x1 classifier, applied densely, gives the CAMs.

    With ImageNet weights, as in the reference: BN always normalises with the ImageNet statistics, while
    the BN scale and shift of layer3 and layer4 learn with their convolutions (the backbone lr group);
    conv1/bn1 and layer1/layer2 are frozen and layer2's output is detached. From scratch
    (`pretrained='none'`), every layer learns with ordinary BN, since random early layers would
    otherwise stay random.
    """

    def __init__(self, backbone: str = 'resnet50', pretrained: str = 'imagenet', load_weights: bool = True,
                 num_classes: int = 20):
        super().__init__()
        resnet = build_resnet(backbone, pretrained, load_weights, batch_norm='fixed_stats')
        self.from_scratch = pretrained == 'none'
        self.stage1 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1)
        self.stage2 = resnet.layer2
        self.stage3 = resnet.layer3
        self.stage4 = resnet.layer4
        self.classifier = nn.Conv2d(stage_channels(backbone)[4], num_classes, 1, bias=False)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4])
        self.newly_added = nn.ModuleList([self.classifier])
        if not self.from_scratch:
            for module in (self.stage1, self.stage2):
                module.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C, H/16, W/16)."""
        x = self.stage2(self.stage1(x))
        if not self.from_scratch:
            x = x.detach()
        return self.stage4(self.stage3(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes) class logits."""
        x = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.classifier(x).flatten(1)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes, H/16, W/16) class activation maps, ReLU'd."""
        return F.relu(F.conv2d(self.features(x), self.classifier.weight))

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters that learn, classifier parameters): the two lr groups."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, list(self.newly_added.parameters())


def build(cfg, num_classes: int, load_weights: bool = True) -> Net:
    """The CAM network of a Config (`backbone`, `pretrained`) with `num_classes` outputs."""
    return Net(backbone=cfg.backbone, pretrained=cfg.pretrained, load_weights=load_weights, num_classes=num_classes)
