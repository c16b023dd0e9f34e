"""SEAM's multi-scale CAMs (`--method seam`, the make_cam slot), as the reference's `infer_SEAM.py`.

Per image: every scale (paper 0.5, 1, 1.5, 2) and its horizontal flip go through the whole network; the
PCM output `cam_rv` (all 21 channels: the PCM's per-pixel suppression compares all 20 foreground
classes, so the image's classes cannot be picked first) loses its background channel, is resized
bilinearly (align_corners=False) to the image size, flipped back where flipped, and the 8 maps are
summed. Classes absent from the image are zeroed, then `seam_normalize` applies the reference's
min-max normalisation. Saved as `cam/<id>.npz` in the layout of step/make_cam_psa.py: `keys` (K,)
class indices 0..19 of the image's classes, `high_res` (K, H, W) (what eval_cam, the CRF labels and the
walk read) and `cam` (K, ceil(H/8), ceil(W/8)), high_res zero-padded and 8 x 8 averaged, float32.
The trained network is `weights/cam.pt`, or `--cam_weights` (SEAM's or the CDA authors' release).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from misc import torchutils
from misc.config import Config
from step.make_cam import write_cams
from step.make_cam_psa import pool_to_stride

logger = logging.getLogger(__name__)

def settings(cfg: Config) -> tuple[str, ...]:
    return ('cam_scales', 'cam_network', 'backbone_width', 'pretrained', 'cam_weights')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('train_cam',)


def outputs(cfg: Config) -> list:
    return [cfg.cam_dir]


def seam_normalize(sum_cam: torch.Tensor) -> torch.Tensor:
    """The reference's min-max normalisation of fused CAMs (C, H, W), per class over the image:
    negatives -> 0; pixels below min + 1e-5 -> 0; then (x - min - 1e-5) / (max - min + 1e-5).

    Faithful quirks: the pixels at the minimum come out at -(min + 1e-5) / (max - min + 1e-5) (about
    -1e-5 / max when min is 0, but near -1 when a class covers the whole image with a large minimum), and
    an all-zero map (a class absent from the image) comes out at exactly -1 everywhere. Absent classes are
    not saved, so only the first quirk reaches the outputs."""
    x = sum_cam.clamp(min=0)
    mx = x.amax(dim=(1, 2), keepdim=True)
    mn = x.amin(dim=(1, 2), keepdim=True)
    x = torch.where(x < mn + 1e-5, torch.zeros_like(x), x)
    return (x - mn - 1e-5) / (mx - mn + 1e-5)


@torch.no_grad()
def compute_seam_cams(model, pyramid: Sequence[torch.Tensor], label: np.ndarray, size: Sequence[int],
                      device: torch.device, amp: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image core: pyramid of (2, 3, h_s, w_s) image+flip pairs, label (num_classes,) -> (keys (K,), strided
    (K, ceil(H/8), ceil(W/8)), high_res (K, H, W)) normalised CAMs of the image's classes."""
    size = tuple(int(s) for s in size)
    fused = torch.zeros((len(label),) + size, device=device)                # (num_classes, H, W)
    for pair in pyramid:
        with torchutils.autocast(device, amp):
            _, cam_rv = model(pair.to(device, non_blocking=True))      # (2, 21, h_s, w_s)
        up = F.interpolate(cam_rv[:, 1:].float(), size, mode='bilinear', align_corners=False)
        fused += up[0] + up[1].flip(-1)                                 # flipped back after the resize
    present = torch.as_tensor(label, dtype=torch.float32, device=device)[:, None, None]
    keys = np.nonzero(np.asarray(label) > 1e-5)[0]
    high_res = seam_normalize(fused * present)[torch.as_tensor(keys, dtype=torch.long, device=device)]
    return keys, pool_to_stride(high_res).cpu().numpy(), high_res.cpu().numpy()


def run(cfg: Config) -> dict:
    def cams_of(model, pack, device):
        return compute_seam_cams(model, pack['img'], pack['label'].numpy(), pack['size'], device, cfg.amp)
    return write_cams(cfg, cams_of, 'make_cam (SEAM)')
