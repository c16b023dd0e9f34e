"""PSA's multi-scale CAMs (the `make_cam` slot of --method affinitynet).

Per image (H x W) and scale s (PIL bicubic resize to round(H s) x round(W s)), the image and its
horizontal flip go through the ResNet-38 CAM network; each of the 2 x |scales| maps, restricted to the
image's classes, is upsampled bilinearly (align_corners False) straight to H x W, flipped back where
needed and summed (a sum, not a mean); each class is then divided by its max over the image + 1e-5
(psa infer_cls.py). The flip-back is done before the upsampling, which gives the same map, since the
bilinear grid of a full-size resize is symmetric under the flip.

Saved as `cam/<id>.npz`, the layout of the IRNet step:
  keys      (K,) int64, class indices 0..19 of the image's classes
  high_res  (K, H, W) float32, the normalised CAMs above (what eval_cam, the CRF labels and the walk read)
  cam       (K, ceil(H/8), ceil(W/8)) float32, high_res zero-padded to a multiple of 8 and averaged over
            8 x 8 blocks: the CAMs at the AffinityNet's stride, as the random walk pools them
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from misc import imutils
from misc.config import Config
from step.make_cam import flip_summed_cams, write_cams

logger = logging.getLogger(__name__)

def settings(cfg: Config) -> tuple[str, ...]:
    return ('cam_scales', 'cam_network', 'backbone_width', 'pretrained', 'cam_weights')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('train_cam',)


def fuse_psa(outputs: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """Flip-summed CAMs of each scale, each (K, h_s, w_s) -> (K, H, W): upsampled to `size`, summed over
    scales, divided per class by its max + 1e-5."""
    total = sum(F.interpolate(o[None].float(), tuple(size), mode='bilinear', align_corners=False)[0]
                for o in outputs)
    return total / (total.amax(dim=(1, 2), keepdim=True) + 1e-5)


def pool_to_stride(high_res: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """(K, H, W) -> (K, ceil(H/stride), ceil(W/stride)): zero-pad bottom/right, average each block."""
    height, width = high_res.shape[1:]
    up_h, up_w = imutils.strided_up_size((height, width), stride)
    padded = F.pad(high_res, (0, up_w - width, 0, up_h - height))
    return F.avg_pool2d(padded[None], stride, stride)[0]


@torch.no_grad()
def compute_cams(model, pyramid: Sequence[torch.Tensor], keys: np.ndarray, size: Sequence[int],
                 device: torch.device, amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-image core: pyramid of (2, 3, h_s, w_s) image+flip pairs -> (strided (K, h, w), high_res (K, H, W))."""
    high_res = fuse_psa(flip_summed_cams(model, model.fc8.weight, pyramid, keys, device, amp), size)
    return pool_to_stride(high_res).cpu().numpy(), high_res.cpu().numpy()


def outputs(cfg: Config) -> list[Path]:
    return [cfg.cam_dir]


def run(cfg: Config) -> dict:
    def cams_of(model, pack, device):
        keys = np.nonzero(pack['label'].numpy())[0]
        return (keys,) + compute_cams(model, pack['img'], keys, pack['size'], device, cfg.amp)
    return write_cams(cfg, cams_of, 'make_cam (PSA)')
