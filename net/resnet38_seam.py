"""SEAM's network (Wang et al., CVPR 2020): ResNet-38 CAMs refined by the pixel correlation module (PCM)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def pixel_correlation(cam: torch.Tensor, f: torch.Tensor, proj: nn.Module) -> torch.Tensor:
    """The PCM: every pixel's scores become the similarity-weighted average of all pixels' scores.

    cam (N, C, h0, w0) scores (resized to f's size, align_corners=True), f (N, D, h, w) features, `proj`
    the 1x1 conv (`f9`) embedding them -> (N, C, h, w). Similarity: clipped cosine of the embeddings,
    each column normalised to sum 1 (+1e-5).
    """
    n, _, h, w = f.shape
    cam = F.interpolate(cam, (h, w), mode='bilinear', align_corners=True).reshape(n, -1, h * w)
    g = proj(f).reshape(n, -1, h * w)                               # (N, 192, hw)
    g = g / (torch.linalg.vector_norm(g, dim=1, keepdim=True) + 1e-5)
    aff = F.relu(g.transpose(1, 2) @ g)                             # (N, hw, hw), symmetric
    aff = aff / (aff.sum(dim=1, keepdim=True) + 1e-5)               # columns sum to ~1
    return (cam @ aff).reshape(n, -1, h, w)
