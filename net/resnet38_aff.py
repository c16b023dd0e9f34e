"""AffinityNet (PSA, Ahn & Kwak 2018): ResNet-38 and a 448-d embedding whose L1 distances give pixel affinities.

Head (all 1x1, bias-free, as the reference): conv4 -> 64, conv5 -> 128, conv6 -> 256 channels, each followed
by ELU, concatenated (448) and mixed by a 448 -> 448 convolution and ELU. The affinity of two pixels at
stride 8 is exp(-mean_k |f_i,k - f_j,k|) (the mean over the 448 channels, as the reference's code; the
paper writes the L1 norm). Pairs are those of `misc.indexing.pair_indices` (radius 5: 34 offsets).

Module names are the reference's (`conv1a`, `b2`, ..., `bn7` of the backbone, `f8_3`, `f8_4`, `f8_5`, `f9`),
so a state dict of this network has the keys of `psa/network/resnet38_aff.Net`. BatchNorm is always frozen
(ImageNet statistics, or those of the trained CAM network in the from-scratch demo), and conv1a, b2, b2_1,
b2_2 do not learn, as in the reference.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.indexing import pair_indices
from net.resnet38 import HEAD_PREFIXES, ResNet38, check_width, load_backbone, load_pretrained

HEAD_CHANNELS = (64, 128, 256)
EMBED_CHANNELS = sum(HEAD_CHANNELS)     # 448


class Net(ResNet38):
    def __init__(self, width: float = 1.0, radius: int = 5):
        super().__init__(width=width, frozen_bn=True)
        c4, c5, c6 = (self.channels[k] for k in ('conv4', 'conv5', 'conv6'))
        self.radius = radius
        self.f8_3 = nn.Conv2d(c4, HEAD_CHANNELS[0], 1, bias=False)
        self.f8_4 = nn.Conv2d(c5, HEAD_CHANNELS[1], 1, bias=False)
        self.f8_5 = nn.Conv2d(c6, HEAD_CHANNELS[2], 1, bias=False)
        self.f9 = nn.Conv2d(EMBED_CHANNELS, EMBED_CHANNELS, 1, bias=False)
        for conv in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(conv.weight)            # fan_in, gain sqrt(2): the reference's
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self._pairs: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def head(self) -> list[nn.Module]:
        """The layers trained from scratch (not registered twice, so the state dict keeps the reference's keys)."""
        return [self.f8_3, self.f8_4, self.f8_5, self.f9]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 448, ceil(H/8), ceil(W/8)) embedding."""
        d = super().forward(x)
        f8_3 = F.elu(self.f8_3(d['conv4']))
        f8_4 = F.elu(self.f8_4(d['conv5']))
        f8_5 = F.elu(self.f8_5(d['conv6']))
        return F.elu(self.f9(torch.cat([f8_3, f8_4, f8_5], dim=1)))

    def pairs(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached (src (S,), dst (P, S)) int64 tensors of `pair_indices(radius, (height, width))` on `device`."""
        key = (height, width, str(device))
        if key not in self._pairs:
            src, dst = pair_indices(self.radius, (height, width))
            self._pairs[key] = torch.from_numpy(src).to(device), torch.from_numpy(dst).to(device)
        return self._pairs[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> affinities (N, P, S) of the pairs at stride 8 (float32 also under autocast)."""
        emb = self.embed(x).float()
        src, dst = self.pairs(emb.shape[2], emb.shape[3], emb.device)
        with torch.autocast(emb.device.type, enabled=False):
            return pair_affinity(emb, src, dst)

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone weights that learn, head weights): lr and 10x lr (the reference's groups 0 and 2; its
        bias groups are empty, every convolution being bias-free)."""
        head = [p for layer in self.head for p in layer.parameters()]
        backbone = [p for p in self.parameters() if p.requires_grad and all(p is not q for q in head)]
        return backbone, head


def pair_affinity(emb: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """emb (N, C, h, w), src (S,), dst (P, S) flat indices -> (N, P, S) affinities exp(-mean_c |f_src - f_dst|)."""
    flat = emb.reshape(emb.shape[0], emb.shape[1], -1)
    f_src = flat.index_select(2, src).unsqueeze(2)                                   # (N, C, 1, S)
    f_dst = flat.index_select(2, dst.reshape(-1)).view(flat.shape[0], flat.shape[1], *dst.shape)  # (N, C, P, S)
    return torch.exp(-torch.mean(torch.abs(f_dst - f_src), dim=1))


def affinity_loss_terms(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor,
                        pair_counts: Optional[torch.Tensor] = None, world: int = 1) \
        -> tuple[torch.Tensor, dict[str, float]]:
    """The reference's loss bg/4 + fg/4 + neg/2 and its three terms (as floats).

    bg = sum(bg_pos * -log(aff + 1e-5)) / (n_bg + 1e-5), fg likewise, neg = sum(neg * -log(1 + 1e-5 - aff))
    / (n_neg + 1e-5); aff and the labels (N, P, S), the counts summed over the whole batch. Under DDP,
    `pair_counts` are the (n_bg, n_fg, n_neg) summed over all ranks and `world` their number: each rank
    divides by the global counts and scales by `world`, so that DDP's gradient averaging gives exactly the
    single-process gradient of the global batch (as `net.resnet50_irn.irn_loss`).
    """
    if pair_counts is None:
        pair_counts = torch.stack([bg_pos.sum(), fg_pos.sum(), neg.sum()])
    n_bg, n_fg, n_neg = pair_counts
    bg = torch.sum(-bg_pos * torch.log(aff + 1e-5)) / (n_bg + 1e-5)
    fg = torch.sum(-fg_pos * torch.log(aff + 1e-5)) / (n_fg + 1e-5)
    neg_loss = torch.sum(-neg * torch.log(1. + 1e-5 - aff)) / (n_neg + 1e-5)
    total = (bg / 4 + fg / 4 + neg_loss / 2) * world
    return total, {'bg': bg.item(), 'fg': fg.item(), 'neg': neg_loss.item()}


def affinity_loss(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Scalar AffinityNet loss of one batch: aff and pair labels (N, P, S) (see `affinity_loss_terms`)."""
    return affinity_loss_terms(aff, bg_pos, fg_pos, neg)[0]


def build_net(pretrained: str, width: float = 1.0, load_weights: bool = True,
              cam_state: Optional[Mapping[str, torch.Tensor]] = None, source: str = 'CAM weights') -> Net:
    """AffinityNet with its backbone from ImageNet weights (`pretrained` imagenet or PATH, as
    `net.resnet38.load_pretrained`; width 1) or, with `pretrained` none, from a trained CAM network's state
    dict `cam_state` (reference key names, its width; its classifier is ignored). The head starts from
    scratch. `load_weights=False` builds the architecture only (to load a checkpoint)."""
    if pretrained != 'none':
        check_width(pretrained, width)
    model = Net(width=width)
    if not load_weights:
        return model
    if pretrained != 'none':
        load_pretrained(model, pretrained)
    elif cam_state is None:
        raise ValueError('an AffinityNet without ImageNet weights takes its backbone from the CAM network')
    else:
        load_backbone(model, {k: v for k, v in cam_state.items() if not k.startswith(HEAD_PREFIXES)}, source)
    return model
