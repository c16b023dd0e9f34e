"""What the step drivers share: which images a step reads, loaders, and resumable per-image outputs."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from misc import torchutils
from misc.config import Config
from misc.imutils import BadInputError
from voc12 import dataloader

logger = logging.getLogger(__name__)


def train_ids(cfg: Config) -> list[str]:
    return dataloader.resolve_list(cfg.train_list, 'train_aug', cfg.dataset_root, cfg.sbd_root)


def val_ids(cfg: Config) -> list[str]:
    return dataloader.resolve_list(cfg.val_list, 'val', cfg.dataset_root, cfg.sbd_root)


def infer_ids(cfg: Config) -> list[str]:
    return dataloader.resolve_list(cfg.infer_list, 'train', cfg.dataset_root, cfg.sbd_root)


def eval_ids(cfg: Config) -> list[str]:
    return dataloader.resolve_list(cfg.chainer_eval_set, 'train', cfg.dataset_root, cfg.sbd_root)


def image_labels(cfg: Config, ids: Sequence[str], list_name: str) -> dict[str, np.ndarray]:
    labels = dataloader.load_image_labels(cfg.dataset_root, ids, cfg.work_dir / 'cache')
    dataloader.require_labelled(ids, labels, list_name)
    return labels


def device_of(cfg: Config) -> torch.device:
    return torchutils.select_device(cfg.device)


def train_loader(dataset: Dataset, global_batch: int, cfg: Config, collate_fn=None) -> DataLoader:
    """Shuffled, drop-last batches; under torchrun each rank takes global_batch / world images, so the
    global batch (and the lr schedule) equal the single-process run's."""
    world = torchutils.world_size()
    if global_batch % world:
        raise BadInputError(f'batch {global_batch} does not split over {world} processes; use a multiple')
    sampler = DistributedSampler(dataset, num_replicas=world, rank=torchutils.rank(), shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    return DataLoader(dataset, batch_size=global_batch // world, sampler=sampler, drop_last=True,
                      num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available(),
                      worker_init_fn=torchutils.seed_worker, collate_fn=collate_fn,
                      persistent_workers=False)


def eval_loader(dataset: Dataset, global_batch: int, cfg: Config) -> DataLoader:
    """Unshuffled batches, split over ranks (validation losses are summed over ranks)."""
    world = torchutils.world_size()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=torchutils.rank(), shuffle=False)
    return DataLoader(dataset, batch_size=max(1, global_batch // world), sampler=sampler,
                      num_workers=cfg.num_workers)


def inference_loader(dataset: Dataset, cfg: Config, batch_size: int = 1) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=cfg.num_workers,
                      pin_memory=False, collate_fn=_first if batch_size == 1 else None)


def _first(batch: list):
    return batch[0]


def pending(ids: Sequence[str], output_of: Callable[[str], Path], is_valid: Callable[[Path], bool],
            overwrite: bool) -> list[str]:
    """Ids whose output is missing or unreadable (all of them with `overwrite`)."""
    if overwrite:
        return list(ids)
    return [i for i in ids if not (output_of(i).is_file() and is_valid(output_of(i)))]


def require_outputs(ids: Sequence[str], output_of: Callable[[str], Path], what: str, made_by: str) -> None:
    missing = [i for i in ids if not output_of(i).is_file()]
    if missing:
        raise BadInputError(f'{len(missing)} of {len(ids)} {what} missing (first {output_of(missing[0])}); '
                            f'run the {made_by} step first')


def npz_is_valid(path: Path) -> bool:
    try:
        with np.load(path) as data:
            return 'keys' in data.files
    except Exception:
        return False


def png_is_valid(path: Path) -> bool:
    try:
        from PIL import Image
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:
        return False
