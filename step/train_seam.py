"""Train SEAM's CAM network (`--method seam`, the train_cam slot): two branches per batch and SEAM's losses.

Each batch of crops goes through the network at full size and downscaled by `--seam_scale` (0.3, bilinear,
align_corners=True, as the reference); `misc.seam_losses.seam_losses` gives classification (+ the
adaptive min-pooling term unless `--seam_min_pool false`), equivariant regularisation and equivariant
cross regularisation with top-`--seam_ecr_ratio` hard mining, weights 1. With CDA the B/2 images and
their B/2 pasted versions form one batch that goes through both branches and every loss (the CDA
authors released no SEAM code: this is the project's choice). `--no-cda_seam_equivariance` sends the
pasted half through the full-size branch only, with the classification loss alone, and the originals
through everything: the loss is then (SEAM's loss of the originals + the pasted half's classification) / 2,
what one batch's means give when every term is per image.

The loop, datasets, schedule, checkpoints, `--resume` and DDP are `step.train_cam`'s. Both branches run
inside one module call (`TwoBranches`), so DDP sees one forward per backward. Like the reference, there
is no validation pass.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from misc import torchutils
from misc.config import Config
from misc.seam_losses import classification_loss, downscale, seam_losses
from step import train_cam

def settings(cfg: Config) -> tuple[str, ...]:
    """train_cam's (SEAM has no validation list), SEAM's loss options and, off, --cda_seam_equivariance."""
    shared = tuple(name for name in train_cam.settings(cfg) if name != 'val_list')
    # listed only when off, so that work dirs made before the option keep their fingerprints
    cda = ('cda_seam_equivariance',) if pasted_classification_only(cfg) else ()
    return shared + ('seam_scale', 'seam_ecr_ratio', 'seam_min_pool') + cda


def pasted_classification_only(cfg: Config) -> bool:
    """A CDA pass whose pasted images skip the downscaled branch (`--no-cda_seam_equivariance`)."""
    return cfg.stage == 'cda' and not cfg.cda_seam_equivariance


reads = train_cam.reads
outputs = train_cam.outputs


class TwoBranches(nn.Module):
    """The SEAM network run on a batch and on the batch downscaled by `scale`:
    img (N, 3, H, W) -> (cam1, cam_rv1 (N, K + 1, H, W), cam2, cam_rv2 (n, K + 1, h, w)), h = floor(H * scale),
    K the dataset's class count (21 channels on VOC, 81 on COCO); the downscaled branch sees the first
    `n = downscaled` images (all by default)."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, img: torch.Tensor, downscaled: Optional[int] = None):
        cam1, cam_rv1 = self.net(img)
        cam2, cam_rv2 = self.net(downscale(img[:downscaled], self.scale))
        return cam1, cam_rv1, cam2, cam_rv2


def seam_step_loss(model: nn.Module, img: torch.Tensor, label: torch.Tensor, cfg: Config):
    """(loss, parts) of one batch; `model` is a TwoBranches (or its DDP wrapper). A CDA batch under
    `--no-cda_seam_equivariance` is split into its originals (first half) and pasted versions."""
    originals = img.shape[0] // 2 if pasted_classification_only(cfg) else None
    with torchutils.autocast(img.device, cfg.amp):
        cam1, cam_rv1, cam2, cam_rv2 = model(img) if originals is None else model(img, originals)
    cam1, cam_rv1, cam2, cam_rv2 = cam1.float(), cam_rv1.float(), cam2.float(), cam_rv2.float()
    if originals is None:
        losses = seam_losses(cam1, cam_rv1, cam2, cam_rv2, label,
                             scale=cfg.seam_scale, ecr_ratio=cfg.seam_ecr_ratio, min_pool=cfg.seam_min_pool)
        return losses['loss'], {k: losses[k].item() for k in ('cls', 'er', 'ecr')}
    return losses_with_pasted_classification_only(cam1, cam_rv1, cam2, cam_rv2, label, originals, cfg)


def losses_with_pasted_classification_only(cam1, cam_rv1, cam2, cam_rv2, label: torch.Tensor, originals: int,
                                            cfg: Config):
    """(loss, parts) when only the first `originals` images went through the downscaled branch: SEAM's
    losses of those, and the classification loss of the others' full-size GAP, averaged as halves."""
    losses = seam_losses(cam1[:originals], cam_rv1[:originals], cam2, cam_rv2, label[:originals],
                         scale=cfg.seam_scale, ecr_ratio=cfg.seam_ecr_ratio, min_pool=cfg.seam_min_pool)
    pasted = classification_loss(cam1[originals:], label[originals:])
    parts = {'cls': (losses['cls'] + pasted) / 2, 'er': losses['er'] / 2, 'ecr': losses['ecr'] / 2}
    return (losses['loss'] + pasted) / 2, {k: v.item() for k, v in parts.items()}


def run(cfg: Config) -> dict:
    return train_cam.train(cfg, loss_fn=seam_step_loss, validate_fn=None,
                           wrap=lambda net: TwoBranches(net, cfg.seam_scale))
