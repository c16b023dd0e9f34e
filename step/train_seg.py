"""Train the final segmentation network on the pass's pseudo masks of the train list (train_aug on VOC).

The loop is deeplab-pytorch's (main.py `train`, configs/voc12.yaml), written here from its description:
iterations, not epochs (20,000 of batch 10, as one batch or `--seg_accumulate` chunks of it, e.g. the
reference's 5 x 2); per output of the network (DeepLab-v2: the logits at scales 1, 0.5, 0.75 and their max)
a cross-entropy against the labels resized to that output by PIL's nearest neighbour (`seg_loss`); SGD with
momentum 0.9 over three groups (backbone convs lr, ASPP weights 10x lr, ASPP biases 20x lr without weight
decay; `optimizer_groups`); the lr decays as poly 0.9, updated every 10 iterations (`poly_step_lambda`).

Labels: `sem_seg/<id>.png` of the pass (make_sem_seg is asked for the train list's masks first, as the object
bank asks, so a train list other than the infer list still gets its masks); for the fully supervised upper bound
(stage `fully_supervised`) the ground truth (SegmentationClassAug where the devkit has it, else SegmentationClass).
255 is ignored.

Resumable: `weights/seg_checkpoint.pt` (model, optimizer, schedule, iteration) every `--seg_checkpoint_every`
iterations; `--resume` continues from it to the same weights as an uninterrupted run, since every sample is a
function of (seed, iteration, slot in the batch) (voc12/seg_dataset.py). Under torchrun each rank takes its
chunks of the global batch; DDP averages the chunk gradients, which is what one process accumulating the same
chunks computes. AMP (bf16, or fp16 with a gradient scaler) and channels_last on CUDA when asked.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from misc import device_input, torchutils
from misc.config import Config
from misc.imutils import BadInputError
from misc.progress import progress
from net.deeplab import build_seg_network, input_is_bgr_mean
from step import common, pipeline
from voc12.seg_dataset import IterationSampler, SegTrainDataset, render_deferred

logger = logging.getLogger(__name__)

FULLY_SUPERVISED = 'fully_supervised'    # the stage trained on the ground truth: the upper bound
LR_MULTIPLIERS = {'backbone': 1.0, 'head_weight': 10.0, 'head_bias': 20.0}
POLY_POWER = 0.9

def settings(cfg: Config) -> tuple[str, ...]:
    return ('seg_network', 'seg_pretrained', 'seg_weights', 'seg_iterations', 'seg_batch_size', 'seg_accumulate',
            'seg_learning_rate', 'seg_momentum', 'seg_weight_decay', 'seg_lr_step', 'seg_crop_size', 'seg_scales',
            'seg_msc_scales', 'seg_width', 'seg_aspp_rates', 'seed', 'train_list')


def reads(cfg: Config) -> tuple[str, ...]:
    """The pass's pseudo masks; the fully supervised bound reads the ground truth instead."""
    return () if cfg.stage == FULLY_SUPERVISED else ('make_sem_seg',)


def outputs(cfg: Config) -> list[Path]:
    return [cfg.weights_dir / 'seg.pt', cfg.weights_dir / 'seg_checkpoint.pt']


# ----------------------------------------------------------------------------- loss

@lru_cache(maxsize=64)
def _nearest_source(in_size: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
    """(h * w,) int64: for each pixel of an `out_size` map, the flat index of the `in_size` pixel that PIL's
    nearest-neighbour resize copies there (found by resizing an image of the indices themselves)."""
    height, width = in_size
    index = np.arange(height * width, dtype=np.float32).reshape(height, width)   # exact below 2^24
    resized = np.asarray(Image.fromarray(index, mode='F').resize((out_size[1], out_size[0]), Image.NEAREST))
    return torch.from_numpy(resized.astype(np.int64).reshape(-1))


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """labels (N, H, W) int64 -> (N, h, w), nearest neighbour exactly as PIL's `Image.resize(..., NEAREST)`
    (deeplab-pytorch's `resize_labels`: other nearest rules shift the labels against the logits)."""
    size = (int(size[0]), int(size[1]))
    if tuple(labels.shape[-2:]) == size:
        return labels
    source = _nearest_source(tuple(labels.shape[-2:]), size).to(labels.device)
    return labels.flatten(1)[:, source].reshape(labels.shape[0], *size)


def seg_loss(outputs: Sequence[torch.Tensor], labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Sum over the network's outputs (each (N, C, h, w)) of the cross-entropy (mean over the labelled pixels)
    against `labels` (N, H, W) resized to that output by `resize_labels`. A chunk with no labelled pixel at some
    size adds 0 there (the reference's mean would be NaN)."""
    if isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    total = outputs[0].new_zeros(()).float()
    for logits in outputs:
        target = resize_labels(labels, logits.shape[-2:])
        if bool((target != ignore_index).any()):
            total = total + F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
        else:
            total = total + logits.float().sum() * 0.0
    return total


# ----------------------------------------------------------------------------- optimiser and schedule

def poly_step_lambda(iterations: int, step: int = 10, power: float = POLY_POWER):
    """lr multiplier after `t` finished iterations: (1 - t'/iterations)^power with t' = t rounded down to a
    multiple of `step` (the reference's PolynomialLR, stepped once per iteration, updates every 10)."""
    iterations, step = max(1, int(iterations)), max(1, int(step))

    def factor(t: int) -> float:
        return max(0.0, 1 - ((min(t, iterations) // step) * step) / iterations) ** power
    return factor


def optimizer_groups(model: torch.nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """The three parameter groups: backbone convs (lr, weight decay), head weights (10x lr, weight decay),
    head biases (20x lr, no weight decay). Frozen BatchNorm has no parameters to train. A DeepLab-v2 trained from
    scratch (trainable BN: the CPU demo's) learns at one lr throughout: the 10x and 20x let a new head catch up
    with a pretrained backbone, and from scratch they only destabilise the head."""
    net = torchutils.unwrap(model)
    groups = net.param_groups()
    from_scratch = getattr(net, 'frozen_bn', True) is False
    return [{'params': groups[name], 'lr': lr * (1.0 if from_scratch else LR_MULTIPLIERS[name]), 'name': name,
             'weight_decay': 0.0 if name == 'head_bias' else weight_decay} for name in LR_MULTIPLIERS]


def make_optimizer(model: torch.nn.Module, cfg: Config):
    optimizer = torch.optim.SGD(optimizer_groups(model, cfg.seg_learning_rate, cfg.seg_weight_decay),
                                lr=cfg.seg_learning_rate, momentum=cfg.seg_momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_step_lambda(cfg.seg_iterations, cfg.seg_lr_step))
    return optimizer, scheduler


# ----------------------------------------------------------------------------- data

def gt_label_dir(root: Path) -> Path:
    """Ground-truth label maps of the train list: SegmentationClassAug (SBD + VOC, train_aug) if present."""
    aug = Path(root) / 'SegmentationClassAug'
    return aug if aug.is_dir() else Path(root) / 'SegmentationClass'


def label_dir_for(cfg: Config, ids: Sequence[str]) -> Path:
    """Where the train list's label maps are; makes the pass's pseudo masks of those images first."""
    if cfg.stage == FULLY_SUPERVISED:
        folder = gt_label_dir(cfg.dataset_root)
        common.require_outputs(ids, lambda i: folder / f'{i}.png', 'ground-truth masks of the train list',
                               'dataset (SegmentationClassAug for train_aug)')
        return folder
    pipeline.need(cfg, 'make_sem_seg', ids, label='make_sem_seg (train list, for train_seg)')
    common.require_outputs(ids, lambda i: cfg.sem_seg_dir / f'{i}.png', 'pseudo masks of the train list',
                           'make_sem_seg')
    return cfg.sem_seg_dir


def build_model(cfg: Config, load_weights: bool = True) -> torch.nn.Module:
    return build_seg_network(cfg.seg_network, common.dataset(cfg).num_labels, cfg.seg_pretrained, cfg.seg_msc_scales,
                             cfg.seg_width, load_weights, cfg.seg_aspp_rates)


# ----------------------------------------------------------------------------- loop

def train_iterations(model, loader, optimizer, scheduler, device: torch.device, cfg: Config, start: int,
                     stop: int, on_iteration=None) -> list[dict]:
    """Iterations [start, stop): per iteration `--seg_accumulate` chunks from `loader`, each loss divided by the
    number of chunks, then one optimizer and schedule step. `on_iteration(t)` runs after iteration t (1-based
    count of finished ones; checkpoints). Returns one {'iteration', 'loss', 'lr'} per logged iteration."""
    model.train()
    accumulate, world = cfg.seg_accumulate, torchutils.world_size()
    amp_fp16 = cfg.amp and device.type == 'cuda' and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler('cuda', enabled=amp_fp16)
    log_every = max(1, (stop - start) // 20)
    history, window, tick = [], [], time.perf_counter()
    chunks = iter(loader)
    bar = progress(range(start, stop), desc=f'train_seg{"/" + cfg.stage if cfg.stage else ""}',
                   disable=not torchutils.is_main_process(), leave=False)
    for iteration in bar:
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for k in range(accumulate):
            batch = next(chunks)
            if 'seg_src' in batch:               # deferred samples: the rescale and crop happen here
                img, labels = render_deferred(batch, device, cfg.seg_crop_size, input_is_bgr_mean(cfg.seg_network))
            else:
                img = batch['img'].to(device, non_blocking=True)
                labels = batch['label'].to(device, non_blocking=True)
            if cfg.channels_last and device.type == 'cuda':
                img = img.contiguous(memory_format=torch.channels_last)
            sync = k == accumulate - 1 or not hasattr(model, 'no_sync')
            with (nullcontext() if sync else model.no_sync()):
                with torchutils.autocast(device, cfg.amp):
                    outputs = model(img)
                loss = seg_loss(outputs, labels) / accumulate
                if not torch.isfinite(loss):
                    raise FloatingPointError(f'non-finite segmentation loss at iteration {iteration + 1}; lower '
                                             '--seg_learning_rate')
                scaler.scale(loss).backward()
            loss_sum += float(loss.detach())
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        window.append(loss_sum)
        if (iteration + 1) % log_every == 0 or iteration + 1 == stop:
            mean = float(torchutils.all_reduce_sum(torch.tensor([np.mean(window)], dtype=torch.float64))[0]) / world
            elapsed = time.perf_counter() - tick
            history.append({'iteration': iteration + 1, 'loss': mean, 'lr': optimizer.param_groups[0]['lr'],
                            'iterations_per_s': len(window) / max(elapsed, 1e-9)})
            bar.set_postfix(loss=f'{mean:.4f}')
            logger.debug('train_seg iteration %d: loss %.4f', iteration + 1, mean)
            window, tick = [], time.perf_counter()
        if on_iteration is not None:
            on_iteration(iteration + 1)
    return history


def _save_checkpoint(path: Path, model, optimizer, scheduler, iteration: int, cfg: Config) -> None:
    torchutils.save_checkpoint(path, model=torchutils.unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                               scheduler=scheduler.state_dict(), iteration=iteration, config=cfg.to_json())


def run(cfg: Config) -> dict:
    with torchutils.global_random_state_kept():
        return train(cfg)


def train(cfg: Config, stop_after: Optional[int] = None) -> dict:
    """Train and save `weights/seg.pt` ({'model', 'network', 'config'}); `stop_after` (tests) stops after that
    many iterations with a checkpoint, as if the run had been killed there."""
    weights, checkpoint = cfg.weights_dir / 'seg.pt', cfg.weights_dir / 'seg_checkpoint.pt'
    if cfg.seg_weights is not None:
        logger.info('--seg_weights %s given: train_seg skipped, make_seg uses these weights', cfg.seg_weights)
        return {'skipped': True, 'weights': str(cfg.seg_weights)}
    if weights.is_file() and not cfg.overwrite:
        logger.info('%s exists: train_seg skipped (--overwrite retrains)', weights)
        return {'skipped': True}
    device = common.device_of(cfg)
    ids = common.train_ids(cfg)
    label_dir = label_dir_for(cfg, ids)
    world = torchutils.world_size()
    if cfg.seg_batch_size % (world * cfg.seg_accumulate):
        raise BadInputError(f'--seg_batch_size {cfg.seg_batch_size} does not split into {world} process(es) x '
                            f'--seg_accumulate {cfg.seg_accumulate} equal chunks; use a multiple')
    torch.manual_seed(cfg.seed)         # the initial weights depend on --seed only, not on the steps before
    model = build_model(cfg).to(device)
    if cfg.channels_last and device.type == 'cuda':
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(model, cfg)
    start = 0
    if cfg.resume and checkpoint.is_file():
        state = torchutils.load_checkpoint(checkpoint)
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        start = int(state['iteration'])
        logger.info('train_seg: resumed from %s after iteration %d', checkpoint, start)
    stop = cfg.seg_iterations if stop_after is None else min(cfg.seg_iterations, stop_after)
    dataset = SegTrainDataset(ids, cfg.dataset_root, label_dir, cfg.seg_crop_size, cfg.seg_scales,
                              input_is_bgr_mean(cfg.seg_network), cfg.seed)
    sampler = IterationSampler(len(dataset), cfg.seg_batch_size, cfg.seed, start, stop, torchutils.rank(), world,
                               cfg.seg_accumulate)
    dataset.deferred = common.augments_on_device(cfg, device)
    loader = DataLoader(dataset, batch_size=sampler.chunk, sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=device.type == 'cuda', worker_init_fn=torchutils.seed_worker,
                        collate_fn=device_input.collate if dataset.deferred else None)
    wrapped = torchutils.wrap_ddp(model, device)

    def on_iteration(done: int) -> None:
        if done % cfg.seg_checkpoint_every == 0 or done == stop:
            _save_checkpoint(checkpoint, model, optimizer, scheduler, done, cfg)

    started = time.perf_counter()
    history = train_iterations(wrapped, loader, optimizer, scheduler, device, cfg, start, stop, on_iteration)
    seconds = time.perf_counter() - started
    label = 'train_seg' + ('/' + cfg.stage if cfg.stage else '')
    if history:
        logger.info('%s: %d iterations of batch %d in %.1f s (%.2f it/s), loss %.4f at the end (%s)', label,
                    stop - start, cfg.seg_batch_size, seconds, (stop - start) / max(seconds, 1e-9),
                    history[-1]['loss'], label_dir)
    result = {'iterations': stop - start, 'seconds': seconds, 'history': history, 'labels': str(label_dir)}
    if stop < cfg.seg_iterations:
        torchutils.barrier()
        return dict(result, stopped_at=stop)
    torchutils.save_checkpoint(weights, model=model.state_dict(), network=cfg.seg_network, config=cfg.to_json())
    torchutils.barrier()
    return result
