"""Predictions of the trained segmentation network on the val list, and on `--seg_test_list` when given.

Per image, at its own size (no resizing, batch 1, as deeplab-pytorch tests): the network's logits (DeepLab-v2:
the max over scales 1, 0.5, 0.75) at output stride 8, upsampled bilinearly to the image, argmax ->
`seg/<id>.png` (VOC palette). The logits are kept (`seg_logits/<id>.npz`, float32 at stride 8) and, with `--seg_crf`
(default), refined by the dense CRF of deeplab-pytorch (softmax of the upsampled logits; 10 iterations,
Gaussian 3/1, bilateral 4/67/3) on the image's real colours -> `seg_crf/<id>.png`; the CRF is CPU work spread
over one process per core (`common.cpu_workers`).

Test list (any list, typically VOC's `test`, which has no ground truth): its predictions (the CRF ones with
--seg_crf) are also written in the PASCAL evaluation server's layout, `results/VOC2012/Segmentation/
comp6_test_cls/<id>.png` under the pass's output folder, and packed as `results_test.tar.gz` ready to upload.

Inference is sharded by rank under torchrun; finished images are skipped on a rerun.
"""
from __future__ import annotations

import logging
import shutil
import tarfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from misc import imutils, torchutils
from misc.config import Config
from misc.imutils import BadInputError
from misc.progress import progress
from misc.seg_crf import crf_one_image
from net.deeplab import DeepLabV2, build_seg_network, input_is_bgr_mean
from step import common
from voc12 import dataloader
from voc12.seg_dataset import SegInferenceDataset

logger = logging.getLogger(__name__)

def settings(cfg: Config) -> tuple[str, ...]:
    return ('val_list', 'seg_test_list', 'seg_crf', 'seg_weights', 'seg_network', 'seg_msc_scales')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('train_seg',)
SERVER_LAYOUT = Path('results') / 'VOC2012' / 'Segmentation' / 'comp6_test_cls'


def seg_dir(cfg: Config) -> Path:
    return cfg.out_dir / 'seg'


def seg_crf_dir(cfg: Config) -> Path:
    return cfg.out_dir / 'seg_crf'


def logits_dir(cfg: Config) -> Path:
    return cfg.out_dir / 'seg_logits'


def server_tarball(cfg: Config) -> Path:
    return cfg.out_dir / 'results_test.tar.gz'


def outputs(cfg: Config) -> list[Path]:
    return [seg_dir(cfg), seg_crf_dir(cfg), logits_dir(cfg), cfg.out_dir / 'results', server_tarball(cfg)]


# ----------------------------------------------------------------------------- weights

def load_seg_state(model: torch.nn.Module, state: dict, source: str) -> torch.nn.Module:
    """Trained weights into a segmentation network: deeplab-pytorch's layout for DeepLab-v2 (net.weights.
    load_deeplab), the network's own state dict for the others (strict)."""
    from net.weights import load_deeplab, load_into
    if isinstance(model, DeepLabV2):
        return load_deeplab(model, state, source)
    load_into(model, state, source)
    return model


def load_trained(cfg: Config, device: torch.device) -> torch.nn.Module:
    """The trained network of this pass (`--seg_weights`, else weights/seg.pt), in eval mode on `device`."""
    from net.weights import read_state_dict
    path = Path(cfg.seg_weights) if cfg.seg_weights is not None else cfg.weights_dir / 'seg.pt'
    flag = '--seg_weights' if cfg.seg_weights is not None else 'trained network'
    if not path.is_file():
        raise BadInputError(f'{path} missing; run the train_seg step first (or pass --seg_weights)')
    model = build_seg_network(cfg.seg_network, common.dataset(cfg).num_labels, cfg.seg_pretrained, cfg.seg_msc_scales,
                              cfg.seg_width, load_weights=False, rates=cfg.seg_aspp_rates)
    load_seg_state(model, read_state_dict(path, flag), f'{flag} {path}')
    model = model.to(device).eval()
    if cfg.channels_last and device.type == 'cuda':
        model = model.to(memory_format=torch.channels_last)
    return model


# ----------------------------------------------------------------------------- per image

@torch.no_grad()
def predict_logits(model: torch.nn.Module, img: torch.Tensor, device: torch.device, amp: bool = False,
                   channels_last: bool = False) -> torch.Tensor:
    """img (3, H, W) network input -> (C, h, w) float32 logits of the eval-mode network (output stride 8)."""
    x = img[None].to(device)
    if channels_last and device.type == 'cuda':
        x = x.contiguous(memory_format=torch.channels_last)
    with torchutils.autocast(device, amp):
        logits = model(x)
    return logits[0].float()


def labels_from_logits(logits: torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """(C, h, w) logits -> (H, W) uint8 class map: bilinear upsampling to the image, argmax."""
    up = F.interpolate(logits[None], size=tuple(size), mode='bilinear', align_corners=False)[0]
    return up.argmax(0).to(torch.uint8).cpu().numpy()


# ----------------------------------------------------------------------------- driver

def predicted_ids(cfg: Config) -> tuple[list[str], list[str]]:
    """(val ids, test ids): the val list, and `--seg_test_list` ([] without one)."""
    val = common.val_ids(cfg)
    test = (dataloader.resolve_list(cfg.seg_test_list, 'test', cfg.dataset_root, cfg.sbd_root)
            if cfg.seg_test_list else [])
    return val, test


def write_server_layout(cfg: Config, test_ids: Sequence[str]) -> Path:
    """Copy the test list's predictions into the evaluation server's layout and pack it; returns the tarball."""
    source = seg_crf_dir(cfg) if cfg.seg_crf else seg_dir(cfg)
    target = cfg.out_dir / SERVER_LAYOUT
    target.mkdir(parents=True, exist_ok=True)
    for image_id in test_ids:
        shutil.copyfile(source / f'{image_id}.png', target / f'{image_id}.png')
    with imutils.atomic_path(server_tarball(cfg)) as tmp:
        with tarfile.open(tmp, 'w:gz') as tar:
            tar.add(cfg.out_dir / 'results', arcname='results')
    return server_tarball(cfg)


def run(cfg: Config, ids: Optional[Sequence[str]] = None) -> dict:
    with torchutils.global_random_state_kept():     # its loader draws a worker seed; the steps after it do not see it
        return predict(cfg, ids)


def predict(cfg: Config, ids: Optional[Sequence[str]] = None) -> dict:
    device = common.device_of(cfg)
    val, test = predicted_ids(cfg)
    ids = list(dict.fromkeys(val + test)) if ids is None else list(ids)
    png_of = lambda i: seg_dir(cfg) / f'{i}.png'   # noqa: E731
    logits_of = lambda i: logits_dir(cfg) / f'{i}.npz'   # noqa: E731
    def finished(image_id: str) -> bool:
        return (png_of(image_id).is_file() and common.png_is_valid(png_of(image_id))
                and (not cfg.seg_crf or logits_of(image_id).is_file()))
    todo = torchutils.shard(ids if cfg.overwrite else [i for i in ids if not finished(i)])
    if todo:
        model = load_trained(cfg, device)
        paths = [cfg.dataset_root / 'JPEGImages' / f'{i}.jpg' for i in todo]
        dataset = SegInferenceDataset(paths, input_is_bgr_mean(cfg.seg_network), names=todo)
        palette = common.dataset(cfg).palette
        for item in progress(common.inference_loader(dataset, cfg), total=len(dataset), desc='make_seg',
                             disable=not torchutils.is_main_process()):
            if 'error' in item:
                raise BadInputError(item['error'])
            logits = predict_logits(model, item['img'], device, cfg.amp, cfg.channels_last)
            if cfg.seg_crf:
                imutils.save_npz(logits_of(item['name']), logits=logits.cpu().numpy())
            imutils.save_label_png(png_of(item['name']), labels_from_logits(logits, item['rgb'].shape[:2]), palette)
    torchutils.barrier()
    crf_jobs = []
    if cfg.seg_crf:
        crf_of = lambda i: seg_crf_dir(cfg) / f'{i}.png'   # noqa: E731
        crf_todo = torchutils.shard(common.pending(ids, crf_of, common.png_is_valid, cfg.overwrite))
        crf_jobs = [(i, cfg.dataset_root / 'JPEGImages' / f'{i}.jpg', logits_of(i), crf_of(i), common.dataset(cfg).palette)
                    for i in crf_todo]
        common.run_in_workers(crf_one_image, crf_jobs, common.cpu_workers(cfg), 'make_seg CRF')
        torchutils.barrier()
    result = {'images': len(todo), 'crf_images': len(crf_jobs), 'val': len(val), 'test': len(test)}
    if test and torchutils.is_main_process():
        tarball = write_server_layout(cfg, test)
        logger.info('make_seg: %d test predictions in %s, packed for the evaluation server as %s', len(test),
                    cfg.out_dir / SERVER_LAYOUT, tarball)
        result['server_tarball'] = str(tarball)
    torchutils.barrier()
    return result
