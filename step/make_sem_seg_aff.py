"""Pseudo masks by AffinityNet's random walk: CAM scores propagated by the learned affinities at stride 8.

Per image (as `psa/infer_aff.py`; no flip, no rescaling): the normalised image, zero-padded to a multiple of
8, gives the 448-d embedding and the affinities of the radius-5 pairs (h = H8 / 8, w = W8 / 8). Scores at
full resolution are [(1 - max_k cam_k)^rw_alpha, cam_1..cam_K] over the image's classes, zero-padded, then
averaged over 8 x 8 blocks; the walk applies T = column-normalised (affinity^beta, unit diagonal)
2^exp_times times through its sparse structure (misc.indexing.affinity_random_walk); the result is
upsampled x8 (bilinear), cropped to H x W, and its argmax is the class map (no threshold; no CRF unless
`--rw_crf`, SEAM's `infer_aff.py --crf`: one mean-field iteration of AffinityNet's soft CRF on the upsampled
scores over all classes, with the padded image de-normalised to uint8, before the argmax).
Absent classes are left out of the walk: their scores are 0 before and after it, so the argmax is the same as
the reference's over 21 channels. They still count as 0 in the background's max, as in the reference, where a
score map holds every class: SEAM's normalised CAMs can be negative, and the background then stays at most 1.
The walked scores are kept (`rw_aff/<id>.npz`: `keys`, `rw` (K + 1, h, w));
`walked_scores` reads them back as each class's share against the background, so that eval_sem_seg's
sweep has a background threshold to vary (0.5 is the argmax the masks are).

Maps narrower than 2 * 5 + 1 feature pixels use radius (min(h, w) - 1) // 2, as SEAM does; PSA has no
such case on VOC-sized images.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from misc import imutils, torchutils
from misc.config import Config
from misc.indexing import affinity_random_walk, pair_indices
from misc.progress import progress
from net.resnet38_aff import Net, build_net, pair_affinity
from step import common
from step.train_aff import weights_path
from voc12 import dataloader

logger = logging.getLogger(__name__)

def settings(cfg: Config) -> tuple[str, ...]:
    return ('rw_alpha', 'beta', 'exp_times', 'rw_crf', 'relation_weights')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('make_cam', 'train_relation')
RADIUS = 5


def rw_dir(cfg: Config) -> Path:
    return cfg.out_dir / 'rw_aff'


def outputs(cfg: Config) -> list[Path]:
    return [cfg.sem_seg_dir, rw_dir(cfg)]


def walked_scores(cfg: Config, image_id: str, size: Sequence[int]) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """((K, H, W) scores, keys (K,)) of a mask, or None where its walk was not kept: each class's walked score
    over itself plus the background's, x8 bilinear and cropped as the mask; threshold 0.5 gives the
    mask's argmax (but for exact ties), a higher one keeps only classes that beat the background by more."""
    path = rw_dir(cfg) / f'{image_id}.npz'
    if not path.is_file():
        return None
    with np.load(path) as rw:
        walked, keys = torch.from_numpy(rw['rw']).float(), rw['keys']
    up = F.interpolate(walked[None], scale_factor=8, mode='bilinear', align_corners=False)[0, :, :size[0], :size[1]]
    background, classes = up[:1], up[1:]
    total = classes + background
    share = torch.where(total > 0, classes / total.clamp(min=1e-12), torch.zeros_like(classes))
    return share.numpy(), np.asarray(keys, np.int64)


def mask_threshold(cfg: Config) -> float:
    """The masks are the argmax of background and classes: share 0.5 on the scale of `walked_scores`."""
    return 0.5


def walk_radius(height: int, width: int, radius: int = RADIUS) -> int:
    """`radius`, or (min(h, w) - 1) // 2 on maps too small for it (SEAM's rule)."""
    side = min(height, width)
    return radius if side >= 2 * radius + 1 else (side - 1) // 2


def pooled_scores(cams, alpha: float, padded_size: Sequence[int], num_classes: int = 20) -> torch.Tensor:
    """cams (K, H, W) of an image's K present classes out of `num_classes` -> (K + 1, H8 / 8, W8 / 8):
    background (1 - max)^alpha at full resolution, zero-padded to `padded_size` (multiples of 8) in every
    channel, 8 x 8 average pooled. The max runs over all classes with the absent ones at 0 (the reference's
    score map), so it is never below 0 while a class is absent."""
    cams = torch.as_tensor(np.asarray(cams, dtype=np.float32))
    top = torch.amax(cams, dim=0, keepdim=True) if len(cams) else torch.zeros((1,) + tuple(cams.shape[1:]))
    if len(cams) < num_classes:
        top = top.clamp(min=0)
    background = torch.pow(1 - top, alpha)
    scores = torch.cat([background, cams])
    height, width = scores.shape[1:]
    scores = F.pad(scores, (0, padded_size[1] - width, 0, padded_size[0] - height))
    return F.avg_pool2d(scores[None], 8, 8)[0]


def walk_scores(aff: torch.Tensor, scores: torch.Tensor, radius: int, beta: float, exp_times: int) -> torch.Tensor:
    """aff (P, S) pair affinities of an (h, w) map, scores (C, h, w) -> walked scores (C, h, w) float32."""
    channels, height, width = scores.shape
    if aff.numel() == 0:
        return scores.float()
    src, dst = pair_indices(radius, (height, width))
    walked = affinity_random_walk(aff, torch.from_numpy(src).to(aff.device), torch.from_numpy(dst).to(aff.device),
                                  height * width, scores.reshape(channels, -1).to(aff.device), beta, exp_times)
    return walked.reshape(channels, height, width)


def label_from_walk(walked: torch.Tensor, keys, size: Sequence[int], crf_image: Optional[np.ndarray] = None,
                    num_classes: int = 20) -> np.ndarray:
    """walked (K + 1, h, w) -> (H, W) uint8 class map: x8 bilinear (align_corners False), crop, argmax,
    channel k > 0 -> label keys[k - 1] + 1. With `crf_image` ((8h, 8w, 3) uint8, the padded image), SEAM's
    `--crf`: the upsampled scores, spread over background + `num_classes` channels (absent ones 0), go through
    one iteration of the soft CRF before the argmax."""
    up = F.interpolate(walked[None].float(), scale_factor=8, mode='bilinear', align_corners=False)[0]
    labels = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])
    if crf_image is None:
        index = torch.argmax(up[:, :size[0], :size[1]], dim=0).cpu().numpy()
        return labels.astype(np.uint8)[index]
    from misc.crf import crf_inference_soft
    full = np.zeros((num_classes + 1,) + tuple(up.shape[1:]), np.float32)
    full[labels] = up.cpu().numpy()
    refined = crf_inference_soft(crf_image, full, t=1)
    return np.argmax(refined, axis=0)[:size[0], :size[1]].astype(np.uint8)


def denormalized_uint8(img: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) image -> (H, W, 3) uint8 as SEAM's `infer_aff.py` undoes it for the CRF:
    x * std + mean, times 255, clipped to [0, 255], truncated (zero padding comes out as the mean colour)."""
    hwc = img.detach().cpu().numpy().transpose(1, 2, 0).astype(np.float32)
    out = (hwc * np.asarray(imutils.IMAGENET_STD, np.float32) + np.asarray(imutils.IMAGENET_MEAN, np.float32)) * 255
    return np.clip(out, 0, 255).astype(np.uint8)


@torch.no_grad()
def sem_seg_from_affinity(model: Net, img: torch.Tensor, cams, keys, rw_alpha: float = 16, beta: float = 8,
                          exp_times: int = 8, amp: bool = False, crf: bool = False,
                          num_classes: int = 20) -> tuple[np.ndarray, torch.Tensor]:
    """Per-image core: normalised image (3, H, W), CAMs (K, H, W) of `keys` (K,) class indices 0..19 ->
    ((H, W) uint8 class map, walked scores (K + 1, h, w)). `amp`: the embedding under autocast (CUDA);
    `crf`: SEAM's one-iteration CRF after the walk."""
    height, width = img.shape[1:]
    padded = imutils.strided_up_size((height, width), 8)
    x = F.pad(img[None], (0, padded[1] - width, 0, padded[0] - height))
    device = next(model.parameters()).device
    with torchutils.autocast(device, amp):
        emb = model.embed(x.to(device)).float()
    h, w = emb.shape[2:]
    radius = walk_radius(h, w)
    if radius >= 2:
        src, dst = model.pairs(h, w, emb.device) if radius == model.radius else \
            (torch.from_numpy(a).to(emb.device) for a in pair_indices(radius, (h, w)))
        aff = pair_affinity(emb, src, dst)[0]
    else:
        aff = emb.new_zeros((0, 0))
    scores = pooled_scores(cams, rw_alpha, padded, num_classes)
    walked = walk_scores(aff, scores, radius, beta, exp_times)
    crf_image = denormalized_uint8(x[0]) if crf else None
    return label_from_walk(walked, keys, (height, width), crf_image, num_classes), walked


def load_aff(cfg: Config, device: torch.device) -> Net:
    if cfg.relation_weights is not None:     # a reference's res38_aff.pth (same key names, net/weights.py)
        from net.weights import load_reference_weights
        model = build_net('none', cfg.backbone_width, load_weights=False)
        load_reference_weights(model, 'net.resnet38_aff', cfg.relation_weights, '--relation_weights')
        return model.to(device).eval()
    path = weights_path(cfg)
    if not path.is_file():
        raise common.BadInputError(f'{path} missing; run the train_relation (AffinityNet) step first')
    state = torchutils.load_checkpoint(path)
    model = build_net('none', state.get('width', 1.0), load_weights=False)
    model.load_state_dict(state['model'])
    return model.to(device).eval()


def run(cfg: Config, ids: Optional[Sequence[str]] = None) -> dict:
    device = common.device_of(cfg)
    ids = common.infer_ids(cfg) if ids is None else list(ids)
    cam_of = lambda i: cfg.cam_dir / f'{i}.npz'   # noqa: E731
    output_of = lambda i: cfg.sem_seg_dir / f'{i}.png'   # noqa: E731
    rw_of = lambda i: rw_dir(cfg) / f'{i}.npz'   # noqa: E731
    common.require_outputs(ids, cam_of, 'CAMs of the infer list', 'make_cam')
    todo = torchutils.shard(common.pending(ids, output_of, common.png_is_valid, cfg.overwrite))
    if not todo:
        torchutils.barrier()
        return {'images': 0}
    model = load_aff(cfg, device)
    dataset = dataloader.MultiScaleDataset(todo, cfg.dataset_root, None, (1.0,))
    for pack in progress(common.inference_loader(dataset, cfg), total=len(dataset), desc='make_sem_seg_aff',
                         disable=not torchutils.is_main_process()):
        image_id = pack['name']
        with np.load(cam_of(image_id)) as cam:
            cams, keys = cam['high_res'].astype(np.float32), cam['keys']
        if tuple(cams.shape[1:]) != tuple(pack['size']):
            raise common.BadInputError(f'{cam_of(image_id)}: CAM is {cams.shape[1:]} but the image is '
                                       f'{tuple(pack["size"])}; rerun make_cam with --overwrite')
        label, walked = sem_seg_from_affinity(model, pack['img'][0][0], cams, keys, cfg.rw_alpha, cfg.beta,
                                              cfg.exp_times, cfg.amp, cfg.rw_crf,
                                              common.dataset(cfg).num_classes)
        imutils.save_npz(rw_of(image_id), keys=np.asarray(keys, np.int64), rw=walked.cpu().numpy())
        imutils.save_label_png(output_of(image_id), label, common.dataset(cfg).palette)
    torchutils.barrier()
    return {'images': len(todo)}
