"""Dense-CRF post-processing of the segmentation network's predictions, with deeplab-pytorch's settings.

Kept free of torch (as misc/crf.py) so that the CRF worker processes start fast.
"""
from __future__ import annotations

import cv2
import numpy as np

from misc import imutils
from misc.crf import crf_inference_soft

# configs/voc12.yaml CRF: 10 iterations, Gaussian kernel (xy std 1, weight 3), bilateral (xy 67, rgb 3, weight 4)
DEEPLAB_CRF = dict(t=10, pos_xy_std=1, pos_w=3, bi_xy_std=67, bi_rgb_std=3, bi_w=4)


def softmax(logits: np.ndarray) -> np.ndarray:
    """(C, H, W) logits -> probabilities over axis 0."""
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


def upsample_logits(logits: np.ndarray, size) -> np.ndarray:
    """(C, h, w) -> (C, H, W), bilinear with half-pixel centres (torch's align_corners=False)."""
    logits = np.asarray(logits, np.float32)
    if tuple(logits.shape[1:]) == tuple(size):
        return logits
    return np.stack([cv2.resize(c, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR) for c in logits])


def deeplab_crf(img: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """img (H, W, 3) uint8 in its real colours, probs (C, H, W) -> (H, W) uint8 labels after the CRF."""
    return np.argmax(crf_inference_soft(img, probs, **DEEPLAB_CRF), axis=0).astype(np.uint8)


def crf_one_image(job: tuple) -> str:
    """Worker of make_seg: (id, image path, logits npz path, output PNG path, palette) -> writes the CRF labels."""
    image_id, image_path, logits_path, out_path, palette = job
    img = imutils.read_rgb(image_path)
    with np.load(logits_path) as data:
        logits = data['logits'].astype(np.float32)
    probs = softmax(upsample_logits(logits, img.shape[:2]))
    imutils.save_label_png(out_path, deeplab_crf(img, probs), palette)
    return image_id
