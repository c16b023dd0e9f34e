"""Pseudo masks: random walk of the strided CAMs on IRN's boundary map, upsampled, thresholded.

Per image: boundary map = sigmoid of the mean of the logits of the image and its flip; the CAMs
(times 1 - boundary) are propagated by the transition affinity**beta (radius 5) applied
2**exp_times times; the result is upsampled x4 (bilinear), cropped to H x W, divided by its global
max, and the argmax over [sem_seg_bg_thres, classes...] gives the class map. The random-walk scores at
stride 4 are kept too (`rw/<id>.npz`); `walked_scores` reads them back, so eval_sem_seg can sweep
thresholds without redoing the walk.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from misc import imutils, torchutils
from misc.config import Config
from misc.indexing import propagate_to_edge
from misc.metrics import label_from_scores
from misc.progress import progress
from step import common
from voc12 import dataloader

logger = logging.getLogger(__name__)


def settings(cfg: Config) -> tuple[str, ...]:
    return ('beta', 'exp_times', 'sem_seg_bg_thres')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('make_cam', 'train_relation')


def outputs(cfg: Config) -> list[Path]:
    return [cfg.sem_seg_dir, rw_dir(cfg)]


def rw_dir(cfg: Config) -> Path:
    return cfg.out_dir / 'rw'


def walked_scores(cfg: Config, image_id: str, size: Sequence[int]) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The scores a mask was thresholded from: ((K, H, W) walked CAMs divided by their max, keys (K,)), or
    None where they were not kept. `mask_threshold(cfg)` on them gives the mask back."""
    path = rw_dir(cfg) / f'{image_id}.npz'
    if not path.is_file():
        return None
    with np.load(path) as rw:
        return upsample_scores(torch.from_numpy(rw['rw'])[:, None], size).numpy(), rw['keys']


def mask_threshold(cfg: Config) -> float:
    """The background score of the masks, on the scale of `walked_scores`."""
    return cfg.sem_seg_bg_thres


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def upsample_scores(rw: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(K, 1, h, w) random-walk output -> (K, H, W) scores, x4 bilinear, cropped, divided by the max.

    Where every CAM of the image is zero (the classifier missed all its classes) the reference divides
    0 by 0 and its argmax then paints the whole image with the first class; here the scores stay 0, so
    the mask is background.
    """
    up = F.interpolate(rw, scale_factor=4, mode='bilinear', align_corners=False)[..., 0, :size[0], :size[1]]
    if up.numel() == 0:
        return up
    peak = torch.max(up)
    return up / peak if peak > 0 else torch.zeros_like(up)


def random_walk_scores(cams, edge, beta: float = 10, exp_times: int = 8) -> torch.Tensor:
    """cams (K, h, w) strided CAMs, edge (h, w) boundary probabilities -> (K, 1, h, w) walked CAMs."""
    cams = _as_tensor(cams).float()
    edge = _as_tensor(edge).float().to(cams.device).reshape(cams.shape[-2:])
    return propagate_to_edge(cams, edge, radius=5, beta=beta, exp_times=exp_times)


def sem_seg_from_edge(cams, edge, keys, size: Sequence[int], beta: float = 10, exp_times: int = 8,
                      bg_thres: float = 0.25) -> np.ndarray:
    """Per-image core: strided CAMs (K, h, w), boundary map (h, w), class indices (K,), image size
    (H, W) -> (H, W) uint8 class map (0 background, 1..num_classes: keys + 1)."""
    keys = np.asarray(keys.cpu() if isinstance(keys, torch.Tensor) else keys).astype(np.int64)
    scores = upsample_scores(random_walk_scores(cams, edge, beta, exp_times), size)
    return label_from_scores(scores.cpu().numpy(), keys, bg_thres)


def load_irn(cfg: Config, device: torch.device):
    if cfg.relation_weights is not None:     # a reference's res50_irn.pth, keys mapped by net/weights.py
        from net.weights import load_reference_weights
        module = importlib.import_module(cfg.irn_network)
        model = module.Net(backbone=cfg.backbone, pretrained=cfg.pretrained, load_weights=False)
        load_reference_weights(model, cfg.irn_network, cfg.relation_weights, '--relation_weights')
        return model.to(device).eval(), module
    path = cfg.weights_dir / 'irn.pt'
    if not path.is_file():
        raise common.BadInputError(f'{path} missing; run the train_relation (IRN) step first')
    module = importlib.import_module(cfg.irn_network)
    model = module.Net(backbone=cfg.backbone, pretrained=cfg.pretrained, load_weights=False)
    model.load_state_dict(torchutils.load_checkpoint(path)['model'])
    return model.to(device).eval(), module


def irn_inference(cfg: Config, ids: Sequence[str], device: torch.device, forward: Callable, desc: str) -> Iterator:
    """Per image of `ids`, without gradients: (id, (H, W), forward(module, model, img), its strided CAMs on
    `device`, their class keys), the trained IRN applied by `forward` under --amp. Shared by the
    semantic and the instance pseudo masks."""
    model, module = load_irn(cfg, device)
    dataset = dataloader.MultiScaleDataset(ids, cfg.dataset_root, None, (1.0,))
    for pack in progress(common.inference_loader(dataset, cfg), total=len(dataset), desc=desc,
                         disable=not torchutils.is_main_process()):
        image_id = pack['name']
        with torch.no_grad(), torchutils.autocast(device, cfg.amp):
            out = forward(module, model, pack['img'][0].to(device))
        with np.load(cfg.cam_dir / f'{image_id}.npz') as cam:
            cams, keys = torch.from_numpy(cam['cam']).to(device), cam['keys']
        yield image_id, pack['size'], out, cams, keys


def run(cfg: Config, ids: Optional[Sequence[str]] = None) -> dict:
    """Pseudo masks of the infer list (or of `ids`: the object bank asks for the train list's)."""
    device = common.device_of(cfg)
    ids = common.infer_ids(cfg) if ids is None else list(ids)
    cam_of = lambda i: cfg.cam_dir / f'{i}.npz'   # noqa: E731
    output_of = lambda i: cfg.sem_seg_dir / f'{i}.png'   # noqa: E731
    rw_of = lambda i: rw_dir(cfg) / f'{i}.npz'   # noqa: E731
    common.require_outputs(ids, cam_of, 'CAMs of the images', 'make_cam')
    todo = torchutils.shard(common.pending(ids, output_of, common.png_is_valid, cfg.overwrite))
    if not todo:
        torchutils.barrier()
        return {'images': 0}
    boundary = lambda module, model, img: module.boundary_map(model, img, cfg.irn_crop_size)   # noqa: E731
    for image_id, size, edge, cams, keys in irn_inference(cfg, todo, device, boundary, 'make_sem_seg'):
        rw = random_walk_scores(cams, edge.float(), cfg.beta, cfg.exp_times)
        scores = upsample_scores(rw, size).cpu().numpy()
        imutils.save_npz(rw_of(image_id), keys=keys, rw=rw[:, 0].cpu().numpy())
        imutils.save_label_png(output_of(image_id), label_from_scores(scores, keys, cfg.sem_seg_bg_thres),
                               common.dataset(cfg).palette)
    torchutils.barrier()
    return {'images': len(todo)}
