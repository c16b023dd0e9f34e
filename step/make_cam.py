"""Multi-scale CAMs of every training image: strided (stride 4) and high-resolution (image size).

Each scale's image and its horizontal flip go through the network in one batch; the flipped map is
flipped back and added. Strided CAM: sum over scales of bilinear resizes to ((H-1)//4+1, (W-1)//4+1).
High-res CAM: each scale resized to the stride-16 padded size, summed, cropped to H x W. Only the
image's classes are kept, each divided by its max + 1e-5. Saved as `cam/<id>.npz` with `keys` (K,)
class indices 0..19, `cam` (K, h, w) and `high_res` (K, H, W).

The images are the train list's and, on the synthetic dataset, the context-shift split's
(`common.cam_ids`). Which shift ids exist is not part of the fingerprint: a shift image's CAM depends
only on the trained network and the image, so ids that a new dataset adds are made as missing outputs
are (`common.pending`), and CAMs of ids no list names any more are never read.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from misc import imutils, torchutils
from misc.config import Config
from misc.progress import progress
from step import common
from step.train_cam import build_model
from voc12 import dataloader

logger = logging.getLogger(__name__)


def settings(cfg: Config) -> tuple[str, ...]:
    return ('cam_scales', 'train_list', 'cam_weights')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('train_cam',)


def outputs(cfg: Config) -> list[Path]:
    return [cfg.cam_dir]


def fuse_scales(outputs: Sequence[torch.Tensor], size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip-fused CAMs of each scale, each (K, h_s, w_s) -> normalised (strided (K, h, w), high_res (K, H, W))."""
    strided = imutils.strided_size(size, 4)
    up = imutils.strided_up_size(size, 16)
    strided_cam = torch.stack([F.interpolate(o[None], strided, mode='bilinear', align_corners=False)[0]
                               for o in outputs]).sum(0)
    high_res = torch.stack([F.interpolate(o[:, None], up, mode='bilinear', align_corners=False)
                            for o in outputs]).sum(0)[:, 0, :size[0], :size[1]]
    strided_cam = strided_cam / (F.adaptive_max_pool2d(strided_cam, (1, 1)) + 1e-5)
    high_res = high_res / (F.adaptive_max_pool2d(high_res, (1, 1)) + 1e-5)
    return strided_cam, high_res


@torch.no_grad()
def flip_summed_cams(model, classifier: torch.Tensor, pyramid: Sequence[torch.Tensor], keys: np.ndarray,
                     device: torch.device, amp: bool = False) -> list[torch.Tensor]:
    """Pyramid of (2, 3, h_s, w_s) image+flip pairs -> per scale (K, h, w) ReLU'd CAMs of `keys`, the flip's
    map flipped back and added. `classifier` is the (num_classes, C, 1, 1) weight applied to `model.features`."""
    keys_t = torch.as_tensor(keys, dtype=torch.long, device=device)
    outputs = []
    for pair in pyramid:
        with torchutils.autocast(device, amp):
            features = model.features(pair.to(device, non_blocking=True))
        cams = F.relu(F.conv2d(features.float(), classifier[keys_t]))
        outputs.append(cams[0] + cams[1].flip(-1))
    return outputs


@torch.no_grad()
def compute_cams(model, pyramid: Sequence[torch.Tensor], keys: np.ndarray, size: Sequence[int],
                 device: torch.device, amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-image core: pyramid of (2, 3, h_s, w_s) image+flip pairs -> (strided, high_res) CAMs of `keys`."""
    outputs = flip_summed_cams(model, model.classifier.weight, pyramid, keys, device, amp)
    strided, high_res = fuse_scales(outputs, size)
    return strided.cpu().numpy(), high_res.cpu().numpy()


def load_cam_model(cfg: Config, device: torch.device):
    """The trained CAM network in eval mode: `--cam_weights` (a reference's file, keys mapped by
    net/weights.py) when given, else this pass's weights/cam.pt."""
    if cfg.cam_weights is not None:
        from net.weights import load_reference_weights
        model = load_reference_weights(build_model(cfg, load_weights=False), cfg.cam_network, cfg.cam_weights,
                                       '--cam_weights')
        return model.to(device).eval()
    path = cfg.weights_dir / 'cam.pt'
    if not path.is_file():
        raise common.BadInputError(f'{path} missing; run the train_cam step first')
    model = build_model(cfg, load_weights=False)
    model.load_state_dict(torchutils.load_checkpoint(path)['model'])
    return model.to(device).eval()


def run(cfg: Config) -> dict:
    def cams_of(model, pack, device):
        keys = np.nonzero(pack['label'].numpy())[0]
        return (keys,) + compute_cams(model, pack['img'], keys, pack['size'], device, cfg.amp)
    return write_cams(cfg, cams_of, 'make_cam')


def write_cams(cfg: Config, cams_of: Callable, desc: str) -> dict:
    """The make_cam driver every method shares: `cams_of(model, pack, device) -> (keys, strided, high_res)`
    for each image of `common.cam_ids` (train list, context-shift split) that lacks its `cam/<id>.npz`
    (this rank's share)."""
    device = common.device_of(cfg)
    ids = common.cam_ids(cfg)
    labels = common.image_labels(cfg, ids, 'train list and shift split')
    output_of = lambda i: cfg.cam_dir / f'{i}.npz'   # noqa: E731
    todo = torchutils.shard(common.pending(ids, output_of, common.npz_is_valid, cfg.overwrite))
    if not todo:
        logger.info('make_cam: all %d CAMs exist (--overwrite redoes them)', len(ids))
        torchutils.barrier()
        return {'images': 0}
    model = load_cam_model(cfg, device)
    dataset = dataloader.MultiScaleDataset(todo, cfg.dataset_root, labels, cfg.cam_scales)
    for pack in progress(common.inference_loader(dataset, cfg), total=len(dataset), desc=desc,
                         disable=not torchutils.is_main_process()):
        keys, strided, high_res = cams_of(model, pack, device)
        imutils.save_npz(output_of(pack['name']), keys=np.asarray(keys, np.int64),
                         cam=np.asarray(strided, np.float32), high_res=np.asarray(high_res, np.float32))
    torchutils.barrier()
    return {'images': len(todo)}
