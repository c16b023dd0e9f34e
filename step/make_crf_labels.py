"""AffinityNet's confident labels: soft dense-CRF marginals of the CAMs at a low and a high background power.

Per image, for alpha in (crf_la_alpha, crf_ha_alpha): scores [(1 - max_k cam_k)^alpha, cam_1..cam_K] over the
image's K classes at full resolution, refined by the soft dense CRF (misc.crf.crf_inference_soft, 10
iterations) into (K + 1, H, W) marginals. Both are kept soft (the training labels are argmaxes of 8 x 8
block means after the random crop, so hard labels would not give the same pairs) and written as
`crf/<id>.npz` (`keys` (K,), `la`, `ha` (K + 1, H, W) float16, compressed: see misc.crf.save_crf_maps).
The la/ha rule applied per pixel is also written to `relation_label/<id>.png` (VOC palette; 255 unsure), which
only the report and the contact sheet read.
The CRF is CPU work, spread over one process per core (`common.cpu_workers`), as step/cam_to_ir_label.py.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from misc import torchutils
from misc.config import Config
from misc.crf import alpha_crf_marginals, crf_labels_one_image
from step import common

__all__ = ['alpha_crf_marginals', 'crf_dir', 'run']
logger = logging.getLogger(__name__)

def settings(cfg: Config) -> tuple[str, ...]:
    return ('crf_la_alpha', 'crf_ha_alpha')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('make_cam',)


def crf_dir(cfg: Config) -> Path:
    return cfg.out_dir / 'crf'


def outputs(cfg: Config) -> list[Path]:
    return [crf_dir(cfg), cfg.relation_label_dir]


def crf_is_valid(path: Path) -> bool:
    try:
        with np.load(path) as data:
            return {'keys', 'la', 'ha'} <= set(data.files)
    except Exception:
        return False


def run(cfg: Config) -> dict:
    ids = common.train_ids(cfg)
    cam_of = lambda i: cfg.cam_dir / f'{i}.npz'   # noqa: E731
    output_of = lambda i: crf_dir(cfg) / f'{i}.npz'   # noqa: E731
    common.require_outputs(ids, cam_of, 'CAMs of the train list', 'make_cam')
    todo = torchutils.shard(common.pending(ids, output_of, crf_is_valid, cfg.overwrite))
    jobs = [(i, Path(cfg.dataset_root) / 'JPEGImages' / f'{i}.jpg', cam_of(i), output_of(i),
             cfg.crf_la_alpha, cfg.crf_ha_alpha, cfg.relation_label_dir / f'{i}.png', common.dataset(cfg).palette)
            for i in todo]
    common.run_in_workers(crf_labels_one_image, jobs, common.cpu_workers(cfg), 'make_crf_labels')
    torchutils.barrier()
    return {'images': len(jobs)}
