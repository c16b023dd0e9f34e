"""SEAM's network (Wang et al., CVPR 2020): ResNet-38 CAMs refined by the pixel correlation module (PCM).

Heads on the shared ResNet-38 (`net.resnet38`), all 1x1 and bias-free, as the reference's
`network/resnet38_SEAM.py`:
  fc8   conv6 (4096) -> num_classes + 1 (21 on VOC) after Dropout2d(0.5) (0 with --no-cam_dropout); channel 0 (background) is
        trained by nothing and unused
  f8_3  conv4 (512) -> 64, ReLU;  f8_4  conv5 (1024) -> 128, ReLU        (PCM features)
  f9    3 + 64 + 128 = 195 -> 192, no activation                        (PCM embedding)

`forward(x)` returns (cam, cam_rv), both (N, 21, H, W) at the input size (align_corners=True). The PCM
sees only detached inputs: its scores are computed without gradient from the CAM, its features from
the detached conv4/conv5 and the resized image, so losses on `cam_rv` train f8_3, f8_4 and f9 alone.

The network is a ResNet38 with the heads added, so its state dict has the reference's key names
(`conv1a.weight`, ..., `bn7.*`, `fc8.weight`, `f8_3.weight`, `f8_4.weight`, `f9.weight`) and SEAM's
released checkpoints load as they are (`net.weights`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from net.resnet38 import ResNet38, check_width, load_pretrained



def pixel_correlation(cam: torch.Tensor, f: torch.Tensor, proj: nn.Module) -> torch.Tensor:
    """The PCM: every pixel's scores become the similarity-weighted average of all pixels' scores.

    cam (N, C, h0, w0) scores (resized to f's size, align_corners=True), f (N, D, h, w) features, `proj`
    the 1x1 conv (`f9`) embedding them -> (N, C, h, w). Similarity: clipped cosine of the embeddings,
    each column normalised to sum 1 (+1e-5). Memory: (h*w)^2 per image.
    """
    n, _, h, w = f.shape
    cam = F.interpolate(cam, (h, w), mode='bilinear', align_corners=True).reshape(n, -1, h * w)
    g = proj(f).reshape(n, -1, h * w)                               # (N, 192, hw)
    g = g / (torch.linalg.vector_norm(g, dim=1, keepdim=True) + 1e-5)
    aff = F.relu(g.transpose(1, 2) @ g)                             # (N, hw, hw), symmetric
    aff = aff / (aff.sum(dim=1, keepdim=True) + 1e-5)               # columns sum to ~1
    return (cam @ aff).reshape(n, -1, h, w)


@torch.no_grad()
def pcm_input_scores(cam: torch.Tensor) -> torch.Tensor:
    """The PCM's input, from raw CAM logits (N, 21, h, w), without gradient: ReLU'd and divided by each
    map's max (+1e-5), background = 1 - max over the foreground, and per pixel every foreground score below
    that max set to 0 (ties kept). All 20 foreground channels take part: no image-label masking."""
    cam = F.relu(cam.detach().float())
    peak = cam.flatten(2).max(dim=-1)[0][..., None, None] + 1e-5
    norm = F.relu(cam - 1e-5) / peak
    fg = norm[:, 1:]
    top = fg.max(dim=1, keepdim=True)[0]
    return torch.cat([1 - top, torch.where(fg < top, torch.zeros_like(fg), fg)], dim=1)


class Net(ResNet38):
    """SEAM: (N, 3, H, W) -> (cam logits, cam_rv), each (N, 21, H, W)."""

    def __init__(self, backbone: str = 'resnet38', pretrained: str = 'imagenet', load_weights: bool = True,
                 width: float = 1.0, dropout: bool = True, num_classes: int = 20):
        check_width(pretrained, width)
        frozen = pretrained != 'none'          # ImageNet weights: frozen BN, conv1a/b2* frozen (net.resnet38)
        super().__init__(width=width, frozen_bn=frozen, dropout=dropout)
        channels = self.channels
        self.dropout7 = nn.Dropout2d(0.5 if dropout else 0.0)
        self.fc8 = nn.Conv2d(channels['conv6'], num_classes + 1, 1, bias=False)   # + background
        self.f8_3 = nn.Conv2d(channels['conv4'], 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(channels['conv5'], 128, 1, bias=False)
        self.f9 = nn.Conv2d(3 + 64 + 128, 192, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self.heads = (self.fc8, self.f8_3, self.f8_4, self.f9)     # a tuple: no second set of state-dict keys
        if load_weights and frozen:
            load_pretrained(self, pretrained)

    def pcm_features(self, x: torch.Tensor, feats: dict[str, torch.Tensor], size) -> torch.Tensor:
        """(N, 195, h, w): the image resized to the feature size and the two head projections of the
        detached conv4/conv5 (the backbone learns nothing through the PCM)."""
        return torch.cat([F.interpolate(x, size, mode='bilinear', align_corners=True),
                          F.relu(self.f8_3(feats['conv4'].detach())),
                          F.relu(self.f8_4(feats['conv5'].detach()))], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[2:]
        feats = super().forward(x)
        cam = self.fc8(self.dropout7(feats['conv6']))                   # (N, 21, h, w) logits
        scores = pcm_input_scores(cam)
        f = self.pcm_features(x, feats, cam.shape[2:])
        with torch.autocast(x.device.type, enabled=False):              # the PCM stays in float32
            cam_rv = pixel_correlation(scores, f.float(), self.f9)
        cam_rv = F.interpolate(cam_rv, size, mode='bilinear', align_corners=True)
        cam = F.interpolate(cam.float(), size, mode='bilinear', align_corners=True)
        return cam, cam_rv

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters that learn, the four heads): the 1x and 10x lr groups."""
        head = [p for m in self.heads for p in m.parameters()]
        head_ids = {id(p) for p in head}
        backbone = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        return backbone, head


def build(cfg, num_classes: int, load_weights: bool = True) -> Net:
    """The SEAM network of a Config (`pretrained`, `backbone_width`, `cam_dropout`) for `num_classes`
    foreground classes (its score maps have one more channel, the background)."""
    return Net(pretrained=cfg.pretrained, load_weights=load_weights, width=cfg.backbone_width,
               dropout=cfg.cam_dropout, num_classes=num_classes)
