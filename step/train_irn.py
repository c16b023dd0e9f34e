"""Train IRN's boundary and displacement branches from the IR labels, then measure the mean shift.

Loss (as the reference): (pos_aff + neg_aff)/2 + (dp_fg + dp_bg)/2 with pos_aff = bg_pos/2 + fg_pos/2,
each term averaged over its pixel pairs (radius 10 at stride 4 of the crop). SGD, lr for the boundary
branch and 10x for the displacement branch, poly decay per iteration. After training, the mean
displacement over the infer list is stored in the model's MeanShift buffer.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

import torch

from misc import torchutils
from misc.config import Config
from misc.indexing import PathIndex
from misc.progress import progress
from step import common
from voc12 import dataloader

logger = logging.getLogger(__name__)


def settings(cfg: Config) -> tuple[str, ...]:
    return ('backbone', 'pretrained', 'irn_network', 'irn_crop_size', 'irn_rescale', 'irn_batch_size',
                'irn_num_epoches', 'irn_learning_rate', 'irn_weight_decay', 'seed', 'train_list', 'infer_list',
                'relation_weights', 'irn_backbone_lr_mult')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('make_relation_labels',)


def outputs(cfg: Config) -> list[Path]:
    return [cfg.weights_dir / 'irn.pt', cfg.weights_dir / 'irn_checkpoint.pt']


def build_model(cfg: Config) -> torch.nn.Module:
    """The IRN; without ImageNet weights its backbone comes from the trained CAM network (frozen, or
    fine-tuned with --irn_backbone_lr_mult above 0)."""
    module = importlib.import_module(cfg.irn_network)
    extra = {'train_backbone': True} if cfg.irn_backbone_lr_mult > 0 else {}
    model = module.Net(backbone=cfg.backbone, pretrained=cfg.pretrained, **extra)
    if cfg.pretrained == 'none':
        cam_weights = cfg.weights_dir / 'cam.pt'
        if not cam_weights.is_file():
            raise common.BadInputError(f'{cam_weights} missing: without ImageNet weights IRN takes its backbone '
                                       'from the CAM network; run train_cam first')
        model.load_backbone_from_cam(torchutils.load_checkpoint(cam_weights)['model'])
    return model


def make_optimizer(model, cfg: Config, max_step: int):
    """SGD and its poly schedule. Groups: boundary branch at lr, displacement branch at 10x lr (the
    reference); from scratch with --irn_backbone_lr_mult, the backbone too, at that multiple of lr."""
    groups, multipliers = list(model.trainable_parameters()), [1, 10]
    if cfg.irn_backbone_lr_mult > 0:
        groups.append(model.backbone_parameters())
        multipliers.append(cfg.irn_backbone_lr_mult)
    return torchutils.make_sgd(groups, cfg.irn_learning_rate, cfg.irn_weight_decay, max_step, multipliers)


def train_one_epoch(loss_model, loader, optimizer, scheduler, device, cfg: Config, epoch: int) -> dict:
    irn_loss = importlib.import_module(cfg.irn_network).irn_loss     # the network module's loss, looked up once

    def loss_of(model, img, labels, counts, world):
        with torchutils.autocast(device, cfg.amp):
            losses = model(img)
        return irn_loss([loss.float() for loss in losses], *labels, pair_counts=counts, world=world)
    desc = f'train_irn{"/" + cfg.stage if cfg.stage else ""} epoch {epoch + 1}/{cfg.irn_num_epoches}'
    return common.train_pairs_one_epoch(loss_model, loader, optimizer, scheduler, device, cfg, desc, loss_of)


@torch.no_grad()
def measure_mean_shift(model, cfg: Config, device: torch.device) -> torch.Tensor:
    """Mean over the infer list's batches of the mean displacement (the reference's statistic)."""
    model.eval()
    ids = torchutils.shard(common.infer_ids(cfg))
    dataset = dataloader.TopLeftCropDataset(ids, cfg.dataset_root, cfg.irn_crop_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=max(1, cfg.irn_batch_size // torchutils.world_size()),
                                         shuffle=False, num_workers=cfg.num_workers)
    total = torch.zeros(3, dtype=torch.float64)      # sum of batch means (x, y), number of batches
    model.mean_shift.running_mean.zero_()
    for batch in progress(loader, desc='irn mean shift', disable=not torchutils.is_main_process(), leave=False):
        _, dp = model(batch['img'].to(device))
        total[:2] += dp.float().mean(dim=(0, 2, 3)).double().cpu()
        total[2] += 1
    total = torchutils.all_reduce_sum(total)
    return (total[:2] / total[2].clamp(min=1)).float()


def run(cfg: Config) -> dict:
    weights = cfg.weights_dir / 'irn.pt'
    checkpoint_path = cfg.weights_dir / 'irn_checkpoint.pt'
    if cfg.relation_weights is not None:
        logger.info('--relation_weights %s given: IRN training skipped, the later steps use these weights',
                    cfg.relation_weights)
        return {'skipped': True, 'weights': str(cfg.relation_weights)}
    if weights.is_file() and not cfg.overwrite:
        logger.info('%s exists: IRN training skipped (--overwrite retrains)', weights)
        return {'skipped': True}
    device = common.device_of(cfg)
    ids = common.train_ids(cfg)
    common.require_outputs(ids, lambda i: cfg.relation_label_dir / f'{i}.png', 'IR labels of the train list',
                           'make_relation_labels')
    path_index = PathIndex(radius=10, default_size=(cfg.irn_crop_size // 4, cfg.irn_crop_size // 4))
    dataset = dataloader.AffinityDataset(ids, cfg.dataset_root, cfg.relation_label_dir, cfg.irn_crop_size,
                                         path_index.src_indices, path_index.dst_indices, cfg.irn_rescale, cfg.seed,
                                         num_labels=common.dataset(cfg).num_labels)
    loader = common.train_loader(dataset, cfg.irn_batch_size, cfg)
    if len(loader) == 0:
        raise common.BadInputError(f'train list has {len(dataset)} images, fewer than one batch of '
                                   f'{cfg.irn_batch_size}; lower --irn_batch_size')
    model = build_model(cfg)
    loss_model = importlib.import_module(cfg.irn_network).AffinityDisplacementLoss(model, path_index).to(device)
    max_step = (len(dataset) // cfg.irn_batch_size) * cfg.irn_num_epoches
    optimizer, scheduler = make_optimizer(model, cfg, max_step)
    history = common.fit(
        'train_irn', model, loss_model, dataset, loader, optimizer, scheduler, device, cfg, cfg.irn_num_epoches,
        checkpoint_path, lambda wrapped, epoch: train_one_epoch(wrapped, loader, optimizer, scheduler, device, cfg,
                                                                epoch),
        ('pos_aff', 'neg_aff', 'dp_fg', 'dp_bg'))
    mean_shift = measure_mean_shift(model.to(device), cfg, device)
    model.mean_shift.running_mean.copy_(mean_shift.to(device))
    torchutils.save_checkpoint(weights, model=model.state_dict(), config=cfg.to_json())
    torchutils.barrier()
    return {'epochs': history, 'mean_shift': mean_shift.tolist(), 'max_step': max_step}
