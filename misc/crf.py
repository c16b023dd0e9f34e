"""Dense CRFs of one image: IRNet's IR labels (step/cam_to_ir_label.py) and AffinityNet's soft la/ha maps
(step/make_crf_labels.py).

Kept free of torch so that the CRF worker processes start in a fraction of a second.
"""
from __future__ import annotations

import numpy as np

from misc import imutils


def crf_inference_label(img: np.ndarray, labels: np.ndarray, n_labels: int, t: int = 10,
                        gt_prob: float = 0.7) -> np.ndarray:
    """Dense CRF on `img` (H, W, 3) uint8 from a hard label map (H, W); returns the refined (H, W) labels."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    height, width = img.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(img, dtype=np.uint8), compat=10)
    q = crf.inference(t)
    return np.argmax(np.asarray(q).reshape((n_labels, height, width)), axis=0)


def crf_inference_soft(img: np.ndarray, probs: np.ndarray, t: int = 10, pos_xy_std: float = 3, pos_w: float = 3,
                       bi_xy_std: float = 80, bi_rgb_std: float = 13, bi_w: float = 10) -> np.ndarray:
    """AffinityNet's dense CRF on soft scores: img (H, W, 3) uint8, probs (C, H, W) -> (C, H, W) float32 marginals.

    Unary -log(clip(probs, 1e-5, 1)) (probs need not sum to one), Gaussian kernel (sxy 3, compat 3), bilateral
    kernel (sxy 80, srgb 13, compat 10), `t` mean-field iterations: the reference's parameters. The kernel
    parameters can be changed (the segmentation network's CRF uses deeplab-pytorch's: misc/seg_crf.py).
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    probs = np.asarray(probs, dtype=np.float32)
    n_labels, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    crf.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(img, dtype=np.uint8),
                             compat=bi_w)
    q = crf.inference(t)
    return np.asarray(q, dtype=np.float32).reshape((n_labels, height, width))


def alpha_crf_marginals(img: np.ndarray, cams: np.ndarray, alpha: float, t: int = 10) -> np.ndarray:
    """The la/ha maps of AffinityNet: img (H, W, 3) uint8, cams (K, H, W) of the image's classes (each divided
    by its max) -> (K + 1, H, W) float32 CRF marginals of [background (1 - max_k cam_k)^alpha, cams].

    A low alpha gives a large background score (confident foreground only), a high alpha a small one
    (confident background only).
    """
    cams = np.asarray(cams, dtype=np.float32)
    background = np.power(1 - np.max(cams, axis=0, initial=0.0), alpha)[None]
    return crf_inference_soft(img, np.concatenate([background, cams]).astype(np.float32), t=t)


def cam_to_ir_label(img, cams, keys, conf_fg_thres: float = 0.30, conf_bg_thres: float = 0.05) -> np.ndarray:
    """img (H, W, 3) uint8 RGB, cams (K, H, W) high-res CAMs, keys (K,) class indices 0..19 -> (H, W) uint8."""
    img = np.asarray(img, dtype=np.uint8)
    cams = np.asarray(cams.detach().cpu() if hasattr(cams, 'detach') else cams, dtype=np.float32)
    keys = np.asarray(keys.detach().cpu() if hasattr(keys, 'detach') else keys).astype(np.int64)
    lookup = np.concatenate([[0], keys + 1])

    def confident(threshold: float) -> np.ndarray:
        padded = np.concatenate([np.full((1,) + cams.shape[1:], threshold, np.float32), cams])
        return lookup[crf_inference_label(img, np.argmax(padded, axis=0), n_labels=len(lookup))]

    fg_conf, bg_conf = confident(conf_fg_thres), confident(conf_bg_thres)
    label = fg_conf.copy()
    label[fg_conf == 0] = 255
    label[(fg_conf == 0) & (bg_conf == 0)] = 0
    return label.astype(np.uint8)


def label_one_image(job: tuple) -> str:
    """Worker: read the image and its CAMs, write the IR label PNG (with the palette that may follow the
    thresholds in `job`); returns the image id."""
    image_id, image_path, cam_path, out_path, fg, bg = job[:6]
    palette = job[6] if len(job) > 6 else None
    img = imutils.read_rgb(image_path)
    with np.load(cam_path) as cam:
        high_res, keys = cam['high_res'], cam['keys']
    if high_res.shape[1:] != img.shape[:2]:
        raise imutils.BadInputError(f'{cam_path}: CAM is {high_res.shape[1:]} but {image_path} is '
                                    f'{img.shape[:2]}; rerun make_cam with --overwrite')
    imutils.save_label_png(out_path, cam_to_ir_label(img, high_res, keys, fg, bg), palette)
    return image_id


def save_crf_maps(path, keys: np.ndarray, la: np.ndarray, ha: np.ndarray) -> None:
    """Write the la/ha marginals (K + 1, H, W) as float16 in a compressed npz with the class keys (K,).

    float16 keeps 11 significant bits (absolute error <= 2.4e-4 on [0, 1]); the labels are the argmax of 8 x 8
    block means, which this can flip only where two channels' block means tie to within that error (measured on
    60 demo images, 9 crop offsets each: 0 of 121,500 block labels and 2 of 1,966,080 pixel argmaxes changed).
    Compressed, the maps take about 1/15 of their raw float32 size on the demo data.
    """
    with imutils.atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            np.savez_compressed(f, keys=np.asarray(keys, np.int64), la=la.astype(np.float16),
                                ha=ha.astype(np.float16))


def confident_pixel_label(la: np.ndarray, ha: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The la/ha rule at full resolution, (K + 1, H, W) marginals -> (H, W) uint8 VOC labels: la's class where
    it is foreground, 0 wherever ha says background, 255 elsewhere. (Training applies the rule to 8 x 8 block
    means after the crop; this map is for inspection and the report's label precision and coverage.)"""
    lookup = np.concatenate([[0], np.asarray(keys, np.int64) + 1]).astype(np.uint8)
    la_idx, ha_idx = np.argmax(la, axis=0), np.argmax(ha, axis=0)
    label = np.where(la_idx == 0, 255, lookup[la_idx]).astype(np.uint8)
    label[ha_idx == 0] = 0
    return label


def crf_labels_one_image(job: tuple) -> str:
    """Worker of step/make_crf_labels.py: read the image and its CAMs, write the la/ha maps (and, when a
    path is given, the full-resolution confident label PNG, with the palette that may follow it); returns the
    image id."""
    image_id, image_path, cam_path, out_path, la_alpha, ha_alpha = job[:6]
    label_path = job[6] if len(job) > 6 else None
    palette = job[7] if len(job) > 7 else None
    img = imutils.read_rgb(image_path)
    with np.load(cam_path) as cam:
        high_res, keys = cam['high_res'].astype(np.float32), cam['keys']
    if high_res.shape[1:] != img.shape[:2]:
        raise imutils.BadInputError(f'{cam_path}: CAM is {high_res.shape[1:]} but {image_path} is '
                                    f'{img.shape[:2]}; rerun make_cam with --overwrite')
    la, ha = alpha_crf_marginals(img, high_res, la_alpha), alpha_crf_marginals(img, high_res, ha_alpha)
    if label_path is not None:
        imutils.save_label_png(label_path, confident_pixel_label(la, ha, keys), palette)
    save_crf_maps(out_path, keys, la, ha)
    return image_id
