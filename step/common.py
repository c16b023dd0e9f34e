"""What the step drivers share: which images a step reads, loaders, and resumable per-image outputs."""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from misc import device_input, torchutils
from misc.config import Config
from misc.dataset import DatasetInfo
from misc.imutils import BadInputError
from misc.progress import progress
from voc12 import dataloader
from voc12.classes import VOC12

logger = logging.getLogger(__name__)


def dataset(cfg: Config) -> DatasetInfo:
    """The description of cfg's dataset (class names and count, palette, ignore value) that steps pass to
    misc/ and the networks: the one place a step gets its class count. VOC 2012 (or its synthetic
    stand-in) for --dataset voc12; for coco14 the 80 classes of the prepared view's annotation files."""
    if cfg.dataset == 'coco14':
        from coco14.dataset import dataset_info
        return dataset_info(cfg.dataset_root)
    return VOC12


# The default list of each use, per dataset: VOC trains on train_aug (10,582 with SBD) and evaluates the
# pseudo masks on Segmentation train; COCO trains on train2014's 82,081 annotated images, validates the CAM
# network on val2014's 40,137 (as ReCAM's step_coco/train_cam.py does) and evaluates on train.
DEFAULT_LISTS = {'voc12': {'train': 'train_aug', 'val': 'val', 'infer': 'train', 'eval': 'train'},
                 'coco14': {'train': 'train', 'val': 'val', 'infer': 'train', 'eval': 'train'}}


def default_list(cfg: Config, use: str) -> str:
    return DEFAULT_LISTS[cfg.dataset][use]


def train_ids(cfg: Config) -> list[str]:
    return dataloader.resolve_list(cfg.train_list, default_list(cfg, 'train'), cfg.dataset_root, cfg.sbd_root)


def val_ids(cfg: Config) -> list[str]:
    return dataloader.resolve_list(cfg.val_list, default_list(cfg, 'val'), cfg.dataset_root, cfg.sbd_root)


def infer_ids(cfg: Config) -> list[str]:
    return dataloader.resolve_list(cfg.infer_list, default_list(cfg, 'infer'), cfg.dataset_root, cfg.sbd_root)


def eval_ids(cfg: Config) -> list[str]:
    return dataloader.resolve_list(cfg.chainer_eval_set, default_list(cfg, 'eval'), cfg.dataset_root, cfg.sbd_root)


def cam_ids(cfg: Config) -> list[str]:
    """The images make_cam writes CAMs for: the train list, then the synthetic dataset's context-shift
    split (held out of training; eval_cam scores its CAMs) where the dataset has one."""
    ids = train_ids(cfg)
    known = set(ids)
    return ids + [i for i in dataloader.shift_ids(cfg.dataset_root) if i not in known]


def image_labels(cfg: Config, ids: Sequence[str], list_name: str) -> dict[str, np.ndarray]:
    labels = dataloader.load_image_labels(cfg.dataset_root, ids, cfg.work_dir / 'cache', dataset(cfg).num_classes)
    dataloader.require_labelled(ids, labels, list_name)
    return labels


def device_of(cfg: Config) -> torch.device:
    return torchutils.select_device(cfg.device)


def init_train_worker(worker_id: int) -> None:
    """DataLoader worker init: seeds (torchutils.seed_worker) and one OpenCV thread, as torch's own (the
    DataLoader sets one torch thread per worker): each worker is one core's worth of sample work.

    A forked worker must not resize the OpenCV thread pool it inherits: with OpenCV's pthreads backend,
    `cv2.setNumThreads` in a child whose parent's pool threads were asleep waits forever on the parent's
    condition variables. So `train_loader` sets one thread in the main process before the workers fork,
    and a worker sets it only where it did not inherit it (a spawned worker, a loader made elsewhere)."""
    import cv2
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    torchutils.seed_worker(worker_id)


def augments_on_device(cfg: Config, device: torch.device) -> bool:
    """Whether training samples are deferred: resized, jittered and cropped on `device` (a GPU, with
    --augment_on_device) rather than in the loader workers (misc/device_augment.py)."""
    return cfg.augment_on_device and device.type == 'cuda'


def train_loader(dataset: Dataset, global_batch: int, cfg: Config, collate_fn=None, compact: bool = True) -> DataLoader:
    """Shuffled, drop-last batches; under torchrun each rank takes global_batch / world images, so the
    global batch (and the lr schedule) equal the single-process run's.

    With `compact` (default) a dataset that has the switch (voc12's training datasets) gives its uint8
    samples, a quarter of the bytes or less, which the training step expands on its device with
    `misc.device_input.to_device`; pinned memory where CUDA is present. Workers start anew every epoch, as
    before: kept across epochs (`persistent_workers`), they are not reseeded, and IRN's training on the demo
    then differs from the non-persistent run's. With workers, the main process is set to one OpenCV thread,
    which its workers inherit. On a GPU (and with `--augment_on_device`, the default) the samples are deferred
    as well: the workers decode and draw, and the device resizes, jitters and crops, bit for bit as they would."""
    world = torchutils.world_size()
    if global_batch % world:
        raise BadInputError(f'batch {global_batch} does not split over {world} processes; use a multiple')
    if compact and hasattr(dataset, 'compact'):
        dataset.compact = True
        if hasattr(dataset, 'deferred') and augments_on_device(cfg, device_of(cfg)):
            dataset.deferred = True           # resize and colour jitter on the GPU (misc/device_augment.py)
            collate_fn = collate_fn or device_input.collate
    if cfg.num_workers > 0:
        import cv2
        cv2.setNumThreads(1)     # before the workers fork (see init_train_worker); the main process makes no samples
    sampler = DistributedSampler(dataset, num_replicas=world, rank=torchutils.rank(), shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    return DataLoader(dataset, batch_size=global_batch // world, sampler=sampler, drop_last=True,
                      num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available(),
                      worker_init_fn=init_train_worker, collate_fn=collate_fn,
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


PAIR_LABELS = ('aff_bg_pos_label', 'aff_fg_pos_label', 'aff_neg_label')


def optimise(loss: torch.Tensor, optimizer, scheduler, non_finite_message: str) -> None:
    """One step of a training loop: backward, optimizer and schedule; a NaN or infinite loss stops the
    run with `non_finite_message` instead of corrupting the weights."""
    if not torch.isfinite(loss):
        raise FloatingPointError(non_finite_message)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()


def train_pairs_one_epoch(model, loader, optimizer, scheduler, device: torch.device, cfg: Config, desc: str,
                          loss_of: Callable) -> dict:
    """One epoch of a relation network trained on pixel-pair labels (IRN, AffinityNet).

    `loss_of(model, img, labels, pair_counts, world) -> (total, {part: float})`; under torchrun the pair
    counts are summed over all ranks, so each rank divides by the global counts (and scales by `world`):
    DDP's gradient average then equals the one-process gradient exactly.
    """
    model.train()
    totals, images, data_time, start = {}, 0, 0.0, time.perf_counter()
    tick = time.perf_counter()
    world = torchutils.world_size()
    bar = progress(loader, desc=desc, disable=not torchutils.is_main_process(), leave=False)
    for batch in bar:
        data_time += time.perf_counter() - tick
        batch = device_input.to_device(batch, device, device_input.pair_labels_of(loader))
        img, labels = batch['img'], [batch[k] for k in PAIR_LABELS]
        counts = None
        if torchutils.is_distributed():
            counts = torchutils.all_reduce_sum(torch.stack([label.sum() for label in labels]).detach())
        total, parts = loss_of(model, img, labels, counts, world)
        optimise(total, optimizer, scheduler, f'non-finite loss in {desc}; lower the learning rate')
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + value * img.shape[0]
        images += img.shape[0]
        bar.set_postfix(loss=f'{total.item() / world:.4f}')
        tick = time.perf_counter()
    elapsed = time.perf_counter() - start
    stats = {k: v / max(images, 1) for k, v in totals.items()}
    stats.update(images=images, seconds=elapsed, data_seconds=data_time, images_per_s=images / max(elapsed, 1e-9))
    return stats


def fit(name: str, model: torch.nn.Module, to_wrap: torch.nn.Module, dataset, loader: DataLoader, optimizer,
        scheduler, device: torch.device, cfg: Config, num_epochs: int, checkpoint_path: Path | None,
        one_epoch: Callable, loss_keys: Sequence[str], validate: Callable | None = None,
        sync_bn: bool = False, validate_every: int = 1, skip_validation: Callable | None = None) -> list[dict]:
    """The epoch loop of every training step. With --resume, `model`, its optimizer and schedule continue
    from `checkpoint_path`; `to_wrap` (the module whose forward the loss calls) is wrapped for DDP (with
    `sync_bn`, trainable BatchNorm sees the global batch); each epoch reseeds the samples and the sampler,
    runs `one_epoch(wrapped, epoch) -> stats`, adds `validate(wrapped)` as `val_loss` where given (every
    `validate_every` epochs and after the last; `skip_validation()` in the other epochs, which must leave the
    global random state as a validation would, so that every later network starts as before), logs the
    `loss_keys` of its stats (and their `parts`), and saves the epoch checkpoint. Returns the epochs' stats."""
    start_epoch = 0
    if cfg.resume and checkpoint_path is not None and checkpoint_path.is_file():
        start_epoch = torchutils.resume_training(checkpoint_path, model, optimizer, scheduler)
    wrapped = torchutils.wrap_ddp(to_wrap, device, sync_bn=sync_bn)
    label = name + ('/' + cfg.stage if cfg.stage else '')
    history = []
    for epoch in range(start_epoch, num_epochs):
        dataset.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        stats = one_epoch(wrapped, epoch)
        validating = validate is not None and ((epoch + 1) % validate_every == 0 or epoch + 1 == num_epochs)
        if validating:
            stats['val_loss'] = validate(wrapped)
        elif validate is not None and skip_validation is not None:
            skip_validation()
        stats['epoch'] = epoch + 1
        history.append(stats)
        figures = [f'{key} {stats[key]:.4f}' for key in loss_keys if key in stats]
        figures += [f'{key} {value:.4f}' for key, value in stats.get('parts', {}).items()]
        if validating:
            figures.append(f'val loss {stats["val_loss"]:.4f}')
        logger.info('%s epoch %d/%d: %s, %.1f img/s (data %.1fs of %.1fs)', label, epoch + 1, num_epochs,
                    ', '.join(figures), stats['images_per_s'], stats['data_seconds'], stats['seconds'])
        if checkpoint_path is not None:
            torchutils.save_epoch_checkpoint(checkpoint_path, model, optimizer, scheduler, epoch, cfg.to_json())
    return history


def cpu_workers(cfg: Config) -> int:
    """Processes for CPU-only per-image work (dense CRFs), for `run_in_workers`: every core this process may
    use, shared by the torchrun ranks of the node, or `--num_workers` where that is more. The main process
    waits meanwhile, and `--num_workers` is sized for loaders beside a training process (half the cores by
    default), so a CRF pool of that size leaves cores idle. `--num_workers 0` keeps the work in-process."""
    if cfg.num_workers == 0:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    ranks_here = int(os.environ.get('LOCAL_WORLD_SIZE', '1'))
    return max(cfg.num_workers, cores // max(ranks_here, 1))


def run_in_workers(worker: Callable, jobs: Sequence, num_workers: int, desc: str) -> None:
    """`worker(job)` for every job with a progress bar, in `num_workers` spawned processes when more than
    one (CPU-bound per-image work such as dense CRFs; the workers import only the worker's module)."""
    bar = dict(total=len(jobs), desc=desc, disable=not torchutils.is_main_process())
    if num_workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=num_workers, mp_context=multiprocessing.get_context('spawn')) as pool:
            for _ in progress(pool.map(worker, jobs, chunksize=4), **bar):
                pass
    else:
        for job in progress(jobs, **bar):
            worker(job)
