"""Instance pseudo masks (IRNet, Ahn et al. CVPR 2019, section 4): displacement field -> centroids ->
instance map; the CAMs split by instance, walked on the boundary map, thresholded, cut into pieces.

Per image (scale 1.0):
  1. IRN's displacement field D (2, h, w) at stride 4 (of the image alone) and boundary map (h, w) (the
     image and its flip, as for the semantic masks).
  2. Centroids: every pixel walks 300 times along D, read bilinearly, clipped to the map, rounded.
  3. Instance map: pixels whose centroids land in the same 4-connected region of weak displacement
     (|D| < 2.5) form one instance; (N, h, w) one-hot.
  4. Each class's CAM times each instance's mask -> K*N maps, walked like the semantic masks (beta,
     exp_times, radius 5), upsampled x4, divided by the global max; argmax over [ins_seg_bg_thres, maps].
  5. Each (class, instance) region is cut into 4-connected pieces; a piece scores the highest walked
     score inside it, or 0 when it covers under 1% of the image.

Output per image: `ins_seg/<id>.npz` with `instances` (H, W) uint16 (0 none, i: the i-th instance, the
pieces never overlap), `classes` (R,) int64 class indices 0..19, `scores` (R,) float32. With
`--ins_seg_coco`, the masks of the train list are also written as a COCO-format JSON (`misc.coco`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from misc import imutils, torchutils
from misc.config import Config
from step import common
from step.make_sem_seg_labels import irn_inference, random_walk_scores, upsample_scores

logger = logging.getLogger(__name__)

# The Config fields the instance masks (and the COCO file) depend on.
# Not --ins_seg_coco: the export is read off the same instance files, so turning it on adds the train
# list's missing ones and the JSON; nothing made before changes.
def settings(cfg: Config) -> tuple[str, ...]:
    return ('beta', 'exp_times', 'ins_seg_bg_thres', 'irn_crop_size', 'irn_network', 'backbone',
                'train_list', 'sbd_root')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('make_cam', 'train_relation')

CENTROID_ITERATIONS = 300      # the reference's refinement steps (any number >= 100 works, it says)
CLUSTER_THRES = 2.5            # |displacement| below this: a centroid region (supplementary material)
MIN_FRAGMENT = 0.01            # pieces under this share of the image score 0
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def ins_seg_dir(cfg: Config) -> Path:
    return cfg.out_dir / 'ins_seg'


def coco_path(cfg: Config) -> Path:
    return cfg.out_dir / 'coco' / 'ins_seg_train.json'


def outputs(cfg: Config) -> list[Path]:
    return [ins_seg_dir(cfg), coco_path(cfg)]


# ----------------------------------------------------------------------------- centroids and clusters

def find_centroids_with_refinement(displacement: np.ndarray, iterations: int = CENTROID_ITERATIONS) -> np.ndarray:
    """(2, h, w) displacement field (dy, dx at stride 4) -> (2, h, w) int32 centroid (y, x) of every pixel.

    Every pixel starts at its own coordinates and moves `iterations` times by the field read
    bilinearly at its current position, kept inside the map; the end points are rounded (half to even).
    Positions are float32 as in the reference; each step is computed in float64 and stored as float32,
    its products and sums in the reference's order, so its centroids are reproduced to the bit (the
    steps are accumulated 300 times, and a rounding difference can move a centroid). Both channels are
    read with one flat gather per corner.
    """
    displacement = np.asarray(displacement)
    height, width = displacement.shape[1:3]
    field = displacement.reshape(2, -1)
    pos_y = np.repeat(np.arange(height, dtype=np.float32), width)
    pos_x = np.tile(np.arange(width, dtype=np.float32), height)
    for _ in range(iterations):
        y0, y1 = np.floor(pos_y).astype(np.int64), np.ceil(pos_y).astype(np.int64)
        x0, x1 = np.floor(pos_x).astype(np.int64), np.ceil(pos_x).astype(np.int64)
        fy = pos_y.astype(np.float64) - y0          # fractional parts, float64 like numpy's float32 - int
        fx = pos_x.astype(np.float64) - x0
        row0, row1 = y0 * width, y1 * width
        f11, f01, f10, f00 = (np.take(field, row + col, axis=1)
                              for row, col in ((row1, x1), (row0, x1), (row1, x0), (row0, x0)))
        step = f11 * fy * fx + f01 * (1 - fy) * fx + f10 * fy * (1 - fx) + f00 * (1 - fy) * (1 - fx)
        pos_y = np.clip((pos_y + step[0]).astype(np.float32), 0, height - 1)
        pos_x = np.clip((pos_x + step[1]).astype(np.float32), 0, width - 1)
    return np.stack([np.round(pos_y).astype(np.int32), np.round(pos_x).astype(np.int32)]).reshape(2, height, width)


def cluster_centroids(centroids: np.ndarray, displacement: np.ndarray, thres: float = CLUSTER_THRES) -> np.ndarray:
    """Group pixels by where their centroids land -> (N, h, w) bool one-hot instance map.

    The 4-connected regions where |displacement| < `thres` are the candidate centroids (numbered in
    raster order of their first pixel); every pixel takes the region its centroid (2, h, w) falls in,
    or 'none' (the strong-displacement area). The distinct outcomes, in that order with 'none' first,
    are the N instances.
    """
    displacement = np.asarray(displacement)
    strength = np.sqrt(displacement[0] ** 2 + displacement[1] ** 2)
    regions, _ = ndimage.label(strength < thres, structure=_FOUR_CONNECTED)      # 0: strong displacement
    region_of_pixel = regions[np.asarray(centroids[0]), np.asarray(centroids[1])]
    present, instance_of_pixel = np.unique(region_of_pixel, return_inverse=True)
    instance_of_pixel = instance_of_pixel.reshape(region_of_pixel.shape)
    return instance_of_pixel[None] == np.arange(len(present))[:, None, None]


# ----------------------------------------------------------------------------- instances of an image

def detect_instances(scores: np.ndarray, label: np.ndarray, classes: np.ndarray,
                     min_fragment: float = 0.0) -> dict[str, np.ndarray]:
    """Detections from a (class, instance) label map.

    scores (M, H, W) walked scores of the M = K*N (class, instance) maps; label (H, W) int: 0 none, m + 1
    the m-th map; classes (M,) class index of each map. Every 4-connected piece of every map's region
    is one detection, scored by the highest score of its map inside it, or 0 when it has fewer than
    `min_fragment` pixels. Returns {'instances': (H, W) uint16 (0 none, r + 1 detection r), 'classes'
    (R,) int64, 'scores' (R,) float32}, detections in map order, pieces in raster order.
    """
    instances = np.zeros(label.shape, np.uint16)
    out_classes, out_scores = [], []
    for m in np.unique(label):
        if m == 0:
            continue
        pieces, n_pieces = ndimage.label(label == m, structure=_FOUR_CONNECTED)
        sizes = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
        peaks = ndimage.maximum(scores[m - 1], pieces, np.arange(1, n_pieces + 1))
        for piece in range(1, n_pieces + 1):
            if len(out_classes) + 1 > np.iinfo(np.uint16).max:
                raise ValueError('more than 65535 instance pieces in one image')
            instances[pieces == piece] = len(out_classes) + 1
            out_classes.append(int(classes[m - 1]))
            out_scores.append(0.0 if sizes[piece] < min_fragment else float(peaks[piece - 1]))
    return {'instances': instances, 'classes': np.asarray(out_classes, np.int64).reshape(-1),
            'scores': np.asarray(out_scores, np.float32).reshape(-1)}


def instances_from_irn(cams, keys, edge, displacement, size: Sequence[int], beta: float = 10,
                       exp_times: int = 8, bg_thres: float = 0.25) -> dict[str, np.ndarray]:
    """Per-image core: strided CAMs (K, h, w), class indices (K,), boundary map (h, w), displacement
    field (2, h, w), image size (H, W) -> `detect_instances`'s dict."""
    keys = np.asarray(keys.cpu() if isinstance(keys, torch.Tensor) else keys).astype(np.int64).reshape(-1)
    cams = cams if isinstance(cams, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(cams))
    displacement = displacement.cpu().numpy() if isinstance(displacement, torch.Tensor) else displacement
    displacement = np.asarray(displacement, np.float32)
    centroids = find_centroids_with_refinement(displacement)
    instance_map = cluster_centroids(centroids, displacement)                             # (N, h, w)
    n_instances = len(instance_map)
    split = cams.float()[:, None] * torch.from_numpy(instance_map).to(cams.device, torch.float32)[None]
    walked = random_walk_scores(split.reshape(-1, *split.shape[2:]), edge, beta, exp_times)  # (K*N, 1, h, w)
    scores = upsample_scores(walked, size).cpu().numpy()                                # (K*N, H, W)
    height, width = int(size[0]), int(size[1])
    if len(scores) == 0:
        label = np.zeros((height, width), np.int64)
    else:
        label = np.where(scores.max(axis=0) > bg_thres, scores.argmax(axis=0) + 1, 0)
    return detect_instances(scores, label, np.repeat(keys, n_instances), MIN_FRAGMENT * height * width)


# ----------------------------------------------------------------------------- files

def read_instances(path: Path) -> dict[str, np.ndarray]:
    """{'instances', 'classes', 'scores'} of a written file, plus 'masks' (R, H, W) bool."""
    with np.load(path) as data:
        out = {k: data[k] for k in ('instances', 'classes', 'scores')}
    out['masks'] = out['instances'][None] == np.arange(1, len(out['classes']) + 1, dtype=np.uint16)[:, None, None]
    return out


def _is_valid(path: Path) -> bool:
    try:
        with np.load(path) as data:
            return {'instances', 'classes', 'scores'} <= set(data.files)
    except Exception:
        return False


def make_instances(cfg: Config, ids: Sequence[str]) -> int:
    """Write `ins_seg/<id>.npz` for the ids that lack it (this rank's share); returns how many."""
    device = common.device_of(cfg)
    cam_of = lambda i: cfg.cam_dir / f'{i}.npz'   # noqa: E731
    output_of = lambda i: ins_seg_dir(cfg) / f'{i}.npz'   # noqa: E731
    common.require_outputs(ids, cam_of, 'CAMs', 'make_cam')
    todo = torchutils.shard(common.pending(ids, output_of, _is_valid, cfg.overwrite))
    if not todo:
        return 0
    both = lambda module, model, img: module.boundary_and_displacement(model, img, cfg.irn_crop_size)  # noqa: E731
    for image_id, size, (edge, displacement), cams, keys in irn_inference(cfg, todo, device, both, 'make_ins_seg'):
        found = instances_from_irn(cams, keys, edge.float(), displacement.float(), size, cfg.beta,
                                   cfg.exp_times, cfg.ins_seg_bg_thres)
        imutils.save_npz(output_of(image_id), **found)
    return len(todo)


def run(cfg: Config, ids: Optional[Sequence[str]] = None) -> dict:
    ids = list(common.infer_ids(cfg) if ids is None else ids)
    made = make_instances(cfg, ids)
    torchutils.barrier()
    result: dict = {'images': made}
    if cfg.ins_seg_coco:
        from misc import coco
        train, done = common.train_ids(cfg), set(ids)
        made += make_instances(cfg, [i for i in train if i not in done])
        torchutils.barrier()
        # The same instance files give the same COCO file: write it only when it is missing or stale.
        made_anywhere = int(torchutils.all_reduce_sum(torch.tensor([made]))[0])
        if torchutils.is_main_process() and (made_anywhere or cfg.overwrite or not coco_path(cfg).is_file()):
            payload = coco.export(train, lambda i: read_instances(ins_seg_dir(cfg) / f'{i}.npz'), common.dataset(cfg))
            coco.write(coco_path(cfg), payload)
            logger.info('COCO instance pseudo masks of %d train images (%d instances): %s', len(train),
                        len(payload['annotations']), coco_path(cfg))
            result.update(coco_images=len(train), coco_annotations=len(payload['annotations']))
        result['images'] = made
    return result
