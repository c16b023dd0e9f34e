"""Train the CAM classifier (multilabel soft-margin), optionally with CDA's pasted-object pairs.

Baseline: batches of B images. CDA (the `cda` stage): batches of B/2 images and their B/2 pasted
versions, concatenated into one batch and one loss. The poly schedule keeps the reference's
`max_step = (len // B) * epochs` for both; in CDA each step consumes only B/2 originals, so the decay
ends half-way and the lr then stays at its last value (`--cda_schedule quirk`, which produced the
published numbers); `--cda_schedule full` decays over the steps actually taken.
"""
from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from misc import device_input, torchutils
from misc.config import Config
from misc.progress import progress
from step import common
from voc12 import dataloader

logger = logging.getLogger(__name__)


CDA_SETTINGS = ('cda_variant', 'cda_min_visible', 'cda_schedule', 'cda_paste_context')


def settings(cfg: Config) -> tuple[str, ...]:
    """The fingerprinted settings; the CDA options matter to the CDA pass only."""
    own = ('backbone', 'backbone_width', 'pretrained', 'cam_weights', 'cam_network', 'cam_crop_size',
           'cam_resize_long', 'cam_color_jitter', 'cam_batch_size', 'cam_num_epoches', 'cam_learning_rate',
           'cam_weight_decay', 'seed', 'train_list', 'val_list')
    if cfg.backbone == 'resnet38':          # only the ResNet-38 CAM nets have the dropout switch
        own += ('cam_dropout',)
    return own + CDA_SETTINGS if cfg.stage == 'cda' else own


def reads(cfg: Config) -> tuple[str, ...]:
    """The CDA pass pastes objects of the bank."""
    return ('make_object_bank',) if cfg.stage == 'cda' else ()


def outputs(cfg: Config) -> list[Path]:
    return [cfg.weights_dir / 'cam.pt', cfg.weights_dir / 'cam_checkpoint.pt']


def batch_inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a batch; CDA batches concatenate originals and pasted versions."""
    if 'aug_img' in batch:
        return torch.cat([batch['img'], batch['aug_img']]), torch.cat([batch['label'], batch['aug_label']])
    return batch['img'], batch['label']


def build_model(cfg: Config, load_weights: bool = True) -> torch.nn.Module:
    """The CAM network of `cfg.cam_network`, by its `build(cfg, num_classes, load_weights)`."""
    return importlib.import_module(cfg.cam_network).build(cfg, common.dataset(cfg).num_classes, load_weights)


def classification_loss(model, img: torch.Tensor, label: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, dict]:
    """Multilabel soft-margin loss of the image-level logits; no extra parts to report."""
    with torchutils.autocast(img.device, cfg.amp):
        logits = model(img)
    return F.multilabel_soft_margin_loss(logits.float(), label), {}


def train_one_epoch(model, loader, optimizer, scheduler, device, cfg: Config, epoch: int,
                    loss_fn=classification_loss) -> dict:
    """One pass over `loader`; `loss_fn(model, img, label, cfg) -> (loss, {name: part})` gives the loss of a
    batch (the CAM classifier's by default, SEAM's in `step.train_seam`); parts are averaged per image
    into `stats['parts']`."""
    model.train()
    loss_sum, images, data_time, start = 0.0, 0, 0.0, time.perf_counter()
    part_sums: dict[str, float] = {}
    tick = time.perf_counter()
    bar = progress(loader, desc=f'train_cam{"/" + cfg.stage if cfg.stage else ""} epoch {epoch + 1}/'
                   f'{cfg.cam_num_epoches}', disable=not torchutils.is_main_process(), leave=False)
    for batch in bar:
        data_time += time.perf_counter() - tick
        batch = device_input.to_device(batch, device)
        img, label = batch_inputs(batch)
        img = img.to(device, non_blocking=True)
        label = label.to(device, non_blocking=True)
        if cfg.channels_last and device.type == 'cuda':
            img = img.contiguous(memory_format=torch.channels_last)
        loss, parts = loss_fn(model, img, label, cfg)
        common.optimise(loss, optimizer, scheduler,
                        f'non-finite CAM loss at epoch {epoch + 1}; lower --cam_learning_rate')
        loss_sum += loss.item() * img.shape[0]
        images += img.shape[0]
        for name, value in parts.items():
            part_sums[name] = part_sums.get(name, 0.0) + float(value) * img.shape[0]
        bar.set_postfix(loss=f'{loss.item():.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.2e}')
        tick = time.perf_counter()
    elapsed = time.perf_counter() - start
    stats = {'loss': loss_sum / max(images, 1), 'images': images, 'seconds': elapsed,
             'data_seconds': data_time, 'images_per_s': images / max(elapsed, 1e-9)}
    if part_sums:
        stats['parts'] = {name: value / max(images, 1) for name, value in part_sums.items()}
    return stats


@torch.no_grad()
def validate(model, loader, device, cfg: Config) -> float:
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for batch in loader:
        img, label = batch_inputs(batch)
        with torchutils.autocast(device, cfg.amp):
            logits = model(img.to(device))
        loss = F.multilabel_soft_margin_loss(logits.float(), label.to(device), reduction='sum')
        total += torch.tensor([float(loss), img.shape[0]], dtype=torch.float64)
    total = torchutils.all_reduce_sum(total)
    model.train()
    return float(total[0] / max(total[1], 1))


def make_datasets(cfg: Config):
    """(train set, val set, global batch of the loader) for this stage."""
    ids, v_ids = common.train_ids(cfg), common.val_ids(cfg)
    labels = common.image_labels(cfg, ids, 'train list')
    v_labels = common.image_labels(cfg, v_ids, 'val list')
    root = cfg.dataset_root
    jitter = cfg.cam_color_jitter if any(cfg.cam_color_jitter) else None
    if cfg.stage == 'cda':
        from voc12.cda_dataset import CDAClassificationDataset
        from misc.cda import ObjectBank
        bank = ObjectBank.load(cfg.object_bank_dir)
        train = CDAClassificationDataset(ids, root, labels, bank, cfg.cam_resize_long, cfg.cam_crop_size,
                                         seed=cfg.seed, variant=cfg.cda_variant, min_visible=cfg.cda_min_visible,
                                         paste_context=cfg.cda_paste_context, jitter=jitter,
                                         class_names=common.dataset(cfg).class_names)
        val = CDAClassificationDataset(v_ids, root, v_labels, bank, cfg.cam_resize_long, cfg.cam_crop_size,
                                       seed=cfg.seed + 1, variant=cfg.cda_variant, min_visible=cfg.cda_min_visible,
                                       paste_context=cfg.cda_paste_context,
                                       class_names=common.dataset(cfg).class_names)
        return train, val, cfg.cam_batch_size // 2
    train = dataloader.ClassificationDataset(ids, root, labels, cfg.cam_resize_long, cfg.cam_crop_size, cfg.seed,
                                             jitter=jitter)
    val = dataloader.ClassificationDataset(v_ids, root, v_labels, cfg.cam_resize_long, cfg.cam_crop_size,
                                           cfg.seed + 1)
    return train, val, cfg.cam_batch_size


def max_steps(cfg: Config, n_train: int, steps_per_epoch: int) -> int:
    if cfg.stage == 'cda' and cfg.cda_schedule == 'full':
        return steps_per_epoch * cfg.cam_num_epoches
    return (n_train // cfg.cam_batch_size) * cfg.cam_num_epoches


def run(cfg: Config) -> dict:
    return train(cfg)


def train(cfg: Config, loss_fn=classification_loss, validate_fn=validate, wrap=lambda model: model) -> dict:
    """Train the CAM network of `cfg.cam_network` with `loss_fn` (see `train_one_epoch`), checkpointing
    every epoch (`--resume` goes on from the last one), and save `weights/cam.pt`. `wrap` turns the network
    into the module that DDP wraps and `loss_fn` calls (SEAM's two-branch step); `validate_fn` None skips
    the per-epoch validation loss."""
    weights = cfg.weights_dir / 'cam.pt'
    checkpoint_path = cfg.weights_dir / 'cam_checkpoint.pt'
    if cfg.cam_weights is not None:
        logger.info('--cam_weights %s given: CAM training skipped, the later steps use these weights',
                    cfg.cam_weights)
        return {'skipped': True, 'weights': str(cfg.cam_weights)}
    if weights.is_file() and not cfg.overwrite:
        logger.info('%s exists: CAM training skipped (--overwrite retrains)', weights)
        return {'skipped': True}
    device = common.device_of(cfg)
    train_set, val_set, loader_batch = make_datasets(cfg)
    train_loader = common.train_loader(train_set, loader_batch, cfg)
    val_loader = common.eval_loader(val_set, loader_batch, cfg) if validate_fn is not None else None
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise common.BadInputError(f'train list has {len(train_set)} images, fewer than one batch of '
                                   f'{loader_batch * torchutils.world_size()}; lower --cam_batch_size')
    model = build_model(cfg).to(device)
    if cfg.channels_last and device.type == 'cuda':
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = torchutils.make_sgd(model.trainable_parameters(), cfg.cam_learning_rate,
                                               cfg.cam_weight_decay, max_steps(cfg, len(train_set), steps_per_epoch))
    validation = None if validate_fn is None else lambda wrapped: validate_fn(wrapped, val_loader, device, cfg)

    def skip_validation() -> None:
        # A loader's iterator draws its base seed from the global torch RNG; a skipped validation draws it
        # too, so the networks made after this one (the relation network, the CDA pass's) start as before.
        iter(val_loader)

    # trainable BN (from scratch): statistics over the global batch, as in a single process
    history = common.fit('train_cam', model, wrap(model), train_set, train_loader, optimizer, scheduler, device,
                         cfg, cfg.cam_num_epoches, checkpoint_path,
                         lambda wrapped, epoch: train_one_epoch(wrapped, train_loader, optimizer, scheduler, device,
                                                                cfg, epoch, loss_fn),
                         ('loss',), validate=validation, sync_bn=cfg.pretrained == 'none',
                         validate_every=cfg.cam_val_interval, skip_validation=skip_validation)
    torchutils.save_checkpoint(weights, model=model.state_dict(), config=cfg.to_json())
    torchutils.barrier()
    return {'epochs': history, 'max_step': max_steps(cfg, len(train_set), steps_per_epoch),
            'steps_per_epoch': steps_per_epoch}
