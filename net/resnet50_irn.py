"""Inter-pixel Relation Network: a ResNet (frozen, as the reference) and two light heads at stride 4.

The class-boundary branch predicts a boundary logit map; the displacement branch predicts a 2-D
displacement field towards instance centroids. Head widths follow the reference (32 channels a
level for boundaries; 64-128-256 for displacements).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.indexing import PathIndex, edge_to_affinity
from net.backbone import build_resnet, stage_channels


def _head(in_ch: int, out_ch: int, groups: int, upsample: int = 1) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.GroupNorm(groups, out_ch)]
    if upsample > 1:
        layers.append(nn.Upsample(scale_factor=upsample, mode='bilinear', align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MeanShift(nn.Module):
    """Subtracts the mean displacement (measured after training) in eval mode; identity in training."""

    def __init__(self, num_features: int = 2):
        super().__init__()
        self.register_buffer('running_mean', torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x
        return x - self.running_mean.view(1, -1, 1, 1)


class Net(nn.Module):
    """`train_backbone=False` (the reference): the backbone is frozen, BN statistics included, and only
    the heads learn. `train_backbone=True` (from scratch only, `--irn_backbone_lr_mult` above 0): the backbone,
    initialised from the trained CAM network, is fine-tuned with the heads and its BN layers train."""

    def __init__(self, backbone: str = 'resnet50', pretrained: str = 'imagenet', load_weights: bool = True,
                 train_backbone: bool = False):
        super().__init__()
        self.train_backbone = train_backbone
        resnet = build_resnet(backbone, pretrained, load_weights)
        c0, c1, c2, c3, c4 = stage_channels(backbone)
        self.stage1 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stage2, self.stage3, self.stage4, self.stage5 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        self.mean_shift = MeanShift(2)

        self.fc_edge1 = _head(c0, 32, 4)
        self.fc_edge2 = _head(c1, 32, 4)
        self.fc_edge3 = _head(c2, 32, 4, upsample=2)
        self.fc_edge4 = _head(c3, 32, 4, upsample=4)
        self.fc_edge5 = _head(c4, 32, 4, upsample=4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)

        self.fc_dp1 = _head(c0, 64, 8)
        self.fc_dp2 = _head(c1, 128, 16)
        self.fc_dp3 = _head(c2, 256, 16)
        self.fc_dp4 = _head(c3, 256, 16, upsample=2)
        self.fc_dp5 = _head(c4, 256, 16, upsample=2)
        self.fc_dp6 = _head(768, 256, 16, upsample=2)
        self.fc_dp7 = nn.Sequential(nn.Conv2d(448, 256, 1, bias=False), nn.GroupNorm(16, 256),
                                    nn.ReLU(inplace=True), nn.Conv2d(256, 2, 1, bias=False), self.mean_shift)

        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4, self.stage5])
        self.edge_layers = nn.ModuleList([self.fc_edge1, self.fc_edge2, self.fc_edge3, self.fc_edge4,
                                          self.fc_edge5, self.fc_edge6])
        self.dp_layers = nn.ModuleList([self.fc_dp1, self.fc_dp2, self.fc_dp3, self.fc_dp4, self.fc_dp5,
                                        self.fc_dp6, self.fc_dp7])
        self.backbone.requires_grad_(train_backbone)

    def train(self, mode: bool = True) -> 'Net':
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()    # frozen features: BN statistics must not move
        return self

    def load_backbone_from_cam(self, cam_state: dict) -> None:
        """Copy a trained CAM network's backbone (used when there are no ImageNet weights)."""
        mapping = {'stage1.0.': 'stage1.0.', 'stage1.1.': 'stage1.1.', 'stage1.4.': 'stage2.',
                   'stage2.': 'stage3.', 'stage3.': 'stage4.', 'stage4.': 'stage5.'}
        own = {}
        for key, value in cam_state.items():
            for src, dst in mapping.items():
                if key.startswith(src):
                    own[dst + key[len(src):]] = value
        missing, _ = self.load_state_dict(own, strict=False)
        backbone_missing = [k for k in missing if k.startswith('stage')]
        if backbone_missing:
            raise RuntimeError(f'CAM weights do not cover the IRN backbone, e.g. {backbone_missing[0]}')

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) -> boundary logits (N, 1, H/4, W/4), displacements (N, 2, H/4, W/4)."""
        x1 = self._frozen(self.stage1(x))
        x2 = self._frozen(self.stage2(x1))
        x3 = self._frozen(self.stage3(x2))
        x4 = self._frozen(self.stage4(x3))
        x5 = self._frozen(self.stage5(x4))

        edge1 = self.fc_edge1(x1)
        edge2 = self.fc_edge2(x2)
        h, w = edge2.shape[2:]
        edge3 = self.fc_edge3(x3)[..., :h, :w]
        edge4 = self.fc_edge4(x4)[..., :h, :w]
        edge5 = self.fc_edge5(x5)[..., :h, :w]
        edge_out = self.fc_edge6(torch.cat([edge1, edge2, edge3, edge4, edge5], dim=1))

        dp1 = self.fc_dp1(x1)
        dp2 = self.fc_dp2(x2)
        dp3 = self.fc_dp3(x3)
        dp4 = self.fc_dp4(x4)[..., :dp3.size(2), :dp3.size(3)]
        dp5 = self.fc_dp5(x5)[..., :dp3.size(2), :dp3.size(3)]
        dp_up3 = self.fc_dp6(torch.cat([dp3, dp4, dp5], dim=1))[..., :dp2.size(2), :dp2.size(3)]
        dp_out = self.fc_dp7(torch.cat([dp1, dp2, dp_up3], dim=1))
        return edge_out, dp_out

    def _frozen(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.train_backbone else features.detach()

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(boundary-branch parameters, displacement-branch parameters): lr and 10x lr."""
        return list(self.edge_layers.parameters()), list(self.dp_layers.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters when it is fine-tuned (`train_backbone`), else none."""
        return list(self.backbone.parameters()) if self.train_backbone else []


class AffinityDisplacementLoss(nn.Module):
    """Per-pair losses of the boundary and displacement branches on a fixed crop size.

    Returns, each (N, P, sources) or (N, 2, P, sources):
      pos_aff_loss -log(aff + 1e-5); neg_aff_loss -log(1 + 1e-5 - aff);
      dp_fg_loss |pair displacement - offset|; dp_bg_loss |pair displacement|.
    """

    def __init__(self, net: Net, path_index: PathIndex):
        super().__init__()
        self.net = net
        self.path_index = path_index
        self.n_path_lengths = len(path_index.path_indices)
        for i, indices in enumerate(path_index.path_indices):
            self.register_buffer(f'path_indices{i}', torch.from_numpy(indices), persistent=False)
        offsets = torch.from_numpy(path_index.search_dst).t().float()     # (2, P)
        self.register_buffer('disp_target', offsets[None, :, :, None], persistent=False)

    def to_pair_displacement(self, disp: torch.Tensor) -> torch.Tensor:
        """(N, 2, h, w) -> (N, 2, P, sources) displacement differences source - destination."""
        height, width = disp.shape[2:]
        rf = self.path_index.radius_floor
        crop_h, crop_w = height - rf, width - 2 * rf
        src = disp[:, :, :crop_h, rf:rf + crop_w]
        dst = torch.stack([disp[:, :, dy:dy + crop_h, rf + dx:rf + dx + crop_w]
                           for dy, dx in self.path_index.search_dst], 2)
        pair = src.unsqueeze(2) - dst
        return pair.reshape(pair.size(0), pair.size(1), pair.size(2), -1)

    def forward(self, x: torch.Tensor):
        edge_out, dp_out = self.net(x)
        path_indices = [getattr(self, f'path_indices{i}') for i in range(self.n_path_lengths)]
        aff = edge_to_affinity(torch.sigmoid(edge_out), path_indices)
        pos_aff_loss = -torch.log(aff + 1e-5)
        neg_aff_loss = -torch.log(1. + 1e-5 - aff)
        pair_disp = self.to_pair_displacement(dp_out)
        dp_fg_loss = torch.abs(pair_disp - self.disp_target)
        dp_bg_loss = torch.abs(pair_disp)
        return pos_aff_loss, neg_aff_loss, dp_fg_loss, dp_bg_loss


def boundary_map(net: Net, img_pair: torch.Tensor, crop_size: int = 512, stride: int = 4) -> torch.Tensor:
    """Boundary probabilities (h, w) at stride 4 of an image and its flip `img_pair` (2, 3, H, W).

    Like the reference, the input is zero-padded to `crop_size` (GroupNorm statistics depend on the
    padded size, so this keeps its numbers); larger images are padded up to a multiple of 16 instead
    of failing. The two logit maps are averaged (the flip flipped back) before the sigmoid.
    """
    height, width = img_pair.shape[2:]
    feat_h, feat_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    pad_h = max(crop_size, -(-height // 16) * 16)
    pad_w = max(crop_size, -(-width // 16) * 16)
    x = F.pad(img_pair, [0, pad_w - width, 0, pad_h - height])
    edge_out, _ = net(x)
    edge_out = edge_out[..., :feat_h, :feat_w]
    return torch.sigmoid(edge_out[0] / 2 + edge_out[1].flip(-1) / 2)[0]


def boundary_and_displacement(net: Net, img_pair: torch.Tensor, crop_size: int = 512,
                              stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """`boundary_map` of an image and its flip `img_pair` (2, 3, H, W), and the displacement field
    (2, h, w) of the image alone (not flipped; mean-shifted in eval mode), as the reference's
    instance step reads them. Same padding as `boundary_map`."""
    height, width = img_pair.shape[2:]
    feat_h, feat_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    pad_h = max(crop_size, -(-height // 16) * 16)
    pad_w = max(crop_size, -(-width // 16) * 16)
    edge_out, dp_out = net(F.pad(img_pair, [0, pad_w - width, 0, pad_h - height]))
    edge_out = edge_out[..., :feat_h, :feat_w]
    edge = torch.sigmoid(edge_out[0] / 2 + edge_out[1].flip(-1) / 2)[0]
    return edge, dp_out[0, :, :feat_h, :feat_w]


def irn_loss(losses, bg_pos_label: torch.Tensor, fg_pos_label: torch.Tensor, neg_label: torch.Tensor,
             pair_counts: torch.Tensor | None = None, world: int = 1) -> tuple[torch.Tensor, dict[str, float]]:
    """The reference's total loss: (pos_aff + neg_aff)/2 + (dp_fg + dp_bg)/2, each term averaged over its pairs.

    Under DDP, `pair_counts` are the (bg_pos, fg_pos, neg) pair counts summed over all ranks and `world`
    the number of ranks: each rank then divides its sums by the global counts and scales by `world`,
    so that DDP's gradient averaging gives exactly the single-process gradient of the global batch.
    """
    pos_aff_loss, neg_aff_loss, dp_fg_loss, dp_bg_loss = losses
    if pair_counts is None:
        pair_counts = torch.stack([bg_pos_label.sum(), fg_pos_label.sum(), neg_label.sum()])
    n_bg, n_fg, n_neg = pair_counts
    bg_pos_aff = (bg_pos_label * pos_aff_loss).sum() / (n_bg + 1e-5)
    fg_pos_aff = (fg_pos_label * pos_aff_loss).sum() / (n_fg + 1e-5)
    pos_aff = bg_pos_aff / 2 + fg_pos_aff / 2
    neg_aff = (neg_label * neg_aff_loss).sum() / (n_neg + 1e-5)
    dp_fg = (dp_fg_loss * fg_pos_label.unsqueeze(1)).sum() / (2 * n_fg + 1e-5)
    dp_bg = (dp_bg_loss * bg_pos_label.unsqueeze(1)).sum() / (2 * n_bg + 1e-5)
    total = ((pos_aff + neg_aff) / 2 + (dp_fg + dp_bg) / 2) * world
    return total, {'pos_aff': pos_aff.item(), 'neg_aff': neg_aff.item(), 'dp_fg': dp_fg.item(),
                   'dp_bg': dp_bg.item()}
