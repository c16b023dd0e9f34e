"""SEAM's training losses (Wang et al., CVPR 2020), as the reference's `train_SEAM.py` computes them.

One step sees the network outputs of two branches: the crop at full size (`cam1`, `cam_rv1`, both
(N, 21, H, W)) and the crop downscaled by `scale` (0.3), run through the network again (`cam2`, `cam_rv2`,
(N, 21, h, w) with h = floor(H * scale)). Channel 0 is the background; `labels` (N, 20) are multi-hot. The shapes are VOC's; every function reads the
class count from its inputs (81 channels and (N, 80) labels on COCO).

  cls  = (MLSM(GAP(cam1)) + MLSM(GAP(cam2))) / 2 + (AMP(rv1) + AMP(rv2)) / 2
  er   = mean |A(max_norm(cam1)) - max_norm(cam2)|                   (foreground channels, absent ones 0)
  ecr  = topk-mean |max_onehot(A(cam1n)) - max_norm(rv2)| + the same the other way round
  loss = cls + er + ecr                                               (all weights 1)

A is the 0.3 bilinear downscale (align_corners=True) and AMP the adaptive min-pooling term that the
code adds and the paper does not describe (`min_pool=False` drops it). Gradient routing is the
reference's: the ECR targets are detached, and the network computes `cam_rv` from detached inputs
(`net.resnet38_seam`), so ECR and AMP reach only the PCM head.

The reference edits `cam1`/`cam2` in place (the background channel after ER, then `max_onehot` on
`.detach()` views that share their storage). Those edits land after the tensors' last use in a loss,
so no loss value and no gradient depends on them; here every step works on new tensors instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def max_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per (sample, channel) min-max normalisation of ReLU(x): ReLU(x - min - eps) / (max - min + eps).

    x (N, C, H, W) -> (N, C, H, W) in [0, 1); as the reference's `visualization.max_norm` (torch branch).
    """
    x = F.relu(x)
    flat = x.flatten(2)
    mx = flat.max(dim=-1)[0][..., None, None]
    mn = flat.min(dim=-1)[0][..., None, None]
    return F.relu(x - mn - eps) / (mx - mn + eps)


def max_onehot(x: torch.Tensor) -> torch.Tensor:
    """Keep, per pixel, only the foreground channels (1..) that equal the foreground max (ties all kept,
    the max keeps its value); channel 0 is unchanged. Returns a new tensor (the reference edits x in place)."""
    fg = x[:, 1:]
    top = fg.max(dim=1, keepdim=True)[0]
    return torch.cat([x[:, :1], torch.where(fg == top, fg, torch.zeros_like(fg))], dim=1)


def adaptive_min_pooling_loss(x: torch.Tensor) -> torch.Tensor:
    """x (N, C, h, w) -> scalar: mean of ReLU over the h*w//4 smallest per-pixel channel maxima of each sample."""
    n, _, h, w = x.shape
    k = h * w // 4
    lowest = torch.topk(x.max(dim=1)[0].reshape(n, -1), k=k, dim=-1, largest=False)[0]
    return F.relu(lowest).sum() / (k * n)


def with_background(cam: torch.Tensor) -> torch.Tensor:
    """Max-normed CAM with channel 0 replaced by 1 - max over the foreground channels."""
    return torch.cat([1 - cam[:, 1:].max(dim=1, keepdim=True)[0], cam[:, 1:]], dim=1)


def ecr_loss(target: torch.Tensor, cam_rv: torch.Tensor, ratio: float = 0.2) -> torch.Tensor:
    """Equivariant cross regularisation with hard-example mining: |max_onehot(target) - cam_rv| (target
    detached), mean of each sample's int(C * h * w * ratio) largest entries (C = the channels: 21 on VOC, the
    reference's constant; 81 on COCO), then mean over the batch."""
    n, c, h, w = cam_rv.shape
    error = (max_onehot(target.detach()) - cam_rv).abs().reshape(n, -1)
    return torch.topk(error, k=int(c * h * w * ratio), dim=-1)[0].mean()


def downscale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The equivariance transform A: bilinear resize by `scale` (floor size), align_corners=True."""
    return F.interpolate(x, scale_factor=scale, mode='bilinear', align_corners=True)


def classification_loss(cam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multilabel soft-margin loss of one branch: GAP over the map at its input size, background channel left out."""
    return F.multilabel_soft_margin_loss(cam.mean(dim=(2, 3))[:, 1:], labels)


def seam_losses(cam1: torch.Tensor, cam_rv1: torch.Tensor, cam2: torch.Tensor, cam_rv2: torch.Tensor,
                labels: torch.Tensor, scale: float = 0.3, ecr_ratio: float = 0.2,
                min_pool: bool = True) -> dict[str, torch.Tensor]:
    """The losses of one SEAM training step.

    cam1, cam_rv1 (N, 21, H, W): raw CAM logits and PCM output of the full-size crop; cam2, cam_rv2
    (N, 21, h, w) those of the crop downscaled by `scale`; labels (N, 20) multi-hot.
    Returns 'cls' (classification of both branches, plus the min-pooling term unless `min_pool` is
    False), 'er', 'ecr', 'loss' = cls + er + ecr, and the per-branch parts.
    """
    labels = labels.to(cam1.dtype)
    y = torch.cat([torch.ones_like(labels[:, :1]), labels], dim=1)[..., None, None]   # (N, 21, 1, 1)

    cls1 = classification_loss(cam1, labels)
    cls2 = classification_loss(cam2, labels)
    # adaptive min-pooling on the raw PCM outputs, image's classes only
    rvmin1 = adaptive_min_pooling_loss((cam_rv1 * y)[:, 1:])
    rvmin2 = adaptive_min_pooling_loss((cam_rv2 * y)[:, 1:])

    c1 = downscale(max_norm(cam1), scale) * y          # A(CAM(I))   (N, 21, h, w)
    r1 = downscale(max_norm(cam_rv1), scale) * y
    c2 = max_norm(cam2) * y                            # CAM(A(I))
    r2 = max_norm(cam_rv2) * y

    er = (c1[:, 1:] - c2[:, 1:]).abs().mean()
    c1, c2 = with_background(c1), with_background(c2)
    ecr1 = ecr_loss(c2, r1, ecr_ratio)
    ecr2 = ecr_loss(c1, r2, ecr_ratio)

    cls = (cls1 + cls2) / 2
    if min_pool:
        cls = cls + (rvmin1 + rvmin2) / 2
    ecr = ecr1 + ecr2
    return {'cls': cls, 'er': er, 'ecr': ecr, 'loss': cls + er + ecr,
            'cls1': cls1, 'cls2': cls2, 'rvmin1': rvmin1, 'rvmin2': rvmin2, 'ecr1': ecr1, 'ecr2': ecr2}
