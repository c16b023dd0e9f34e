"""IR labels: confident foreground and background from the high-res CAMs, each refined by a dense CRF.

Label = the class of the foreground pass (background score `conf_fg_thres`) where it found one; 0
where the background pass (score `conf_bg_thres`) also says background; 255 (unknown) elsewhere.
The CRF is CPU work, so the images are spread over worker processes, one per core
(`common.cpu_workers`); the per-image core lives in misc/crf.py, free of torch, so that those processes
start quickly.
"""
from __future__ import annotations

import logging
from pathlib import Path


from misc import torchutils
from misc.config import Config
from misc.crf import cam_to_ir_label, crf_inference_label, label_one_image
from step import common

__all__ = ['cam_to_ir_label', 'crf_inference_label', 'run']
logger = logging.getLogger(__name__)


def settings(cfg: Config) -> tuple[str, ...]:
    return ('conf_fg_thres', 'conf_bg_thres', 'train_list')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('make_cam',)


def outputs(cfg: Config) -> list[Path]:
    return [cfg.relation_label_dir]


def run(cfg: Config) -> dict:
    ids = common.train_ids(cfg)
    cam_of = lambda i: cfg.cam_dir / f'{i}.npz'   # noqa: E731
    output_of = lambda i: cfg.relation_label_dir / f'{i}.png'   # noqa: E731
    common.require_outputs(ids, cam_of, 'CAMs of the train list', 'make_cam')
    todo = torchutils.shard(common.pending(ids, output_of, common.png_is_valid, cfg.overwrite))
    jobs = [(i, Path(cfg.dataset_root) / 'JPEGImages' / f'{i}.jpg', cam_of(i), output_of(i),
             cfg.conf_fg_thres, cfg.conf_bg_thres, common.dataset(cfg).palette) for i in todo]
    common.run_in_workers(label_one_image, jobs, common.cpu_workers(cfg), 'cam_to_ir_label')
    torchutils.barrier()
    return {'images': len(jobs)}
