"""Train AffinityNet on the pair labels of the la/ha CRF maps.

Loss (as the reference): bg/4 + fg/4 + neg/2, each term the mean of -log(aff) (positives) or -log(1 - aff)
(negatives) over its pairs in the whole batch (under torchrun: over all ranks' batches). SGD, lr for the
backbone (conv1a and b2* frozen) and 10x for the head, weight decay, poly decay per iteration, crop
`aff_crop_size`, colour jitter and flips (voc12/aff_dataset.py). The backbone starts from ImageNet
weights, or (`--pretrained none`, the CPU demo) from the trained CAM network, with its BatchNorm frozen
either way as in the reference. Saves `weights/aff.pt`; an epoch checkpoint lets `--resume` go on.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from misc import torchutils
from misc.config import Config
from net.resnet38 import width_of
from net.resnet38_aff import Net, affinity_loss_terms, build_net
from step import common
from step.make_crf_labels import crf_dir
from voc12.aff_dataset import CrfAffinityDataset

logger = logging.getLogger(__name__)

def settings(cfg: Config) -> tuple[str, ...]:
    return ('aff_crop_size', 'aff_batch_size', 'aff_num_epoches', 'aff_learning_rate', 'aff_weight_decay',
                'pretrained', 'backbone_width', 'relation_weights', 'seed')


def reads(cfg: Config) -> tuple[str, ...]:
    return ('make_relation_labels',)


def weights_path(cfg: Config) -> Path:
    return cfg.weights_dir / 'aff.pt'


def outputs(cfg: Config) -> list[Path]:
    return [weights_path(cfg), cfg.weights_dir / 'aff_checkpoint.pt']


def build_model(cfg: Config) -> Net:
    """AffinityNet from ImageNet weights; without them its backbone comes from the trained CAM network."""
    if cfg.pretrained != 'none':
        return build_net(cfg.pretrained)
    cam_weights = cfg.weights_dir / 'cam.pt'
    if not cam_weights.is_file():
        raise common.BadInputError(f'{cam_weights} missing: without ImageNet weights AffinityNet takes its backbone '
                                   'from the CAM network; run train_cam first')
    cam_state = torchutils.load_checkpoint(cam_weights)['model']
    return build_net('none', width_of(cam_state), cam_state=cam_state, source=str(cam_weights))


def train_one_epoch(model, loader, optimizer, scheduler, device, cfg: Config, epoch: int) -> dict:
    def loss_of(net, img, labels, counts, world):
        with torchutils.autocast(device, cfg.amp):
            aff = net(img)
        return affinity_loss_terms(aff.float(), *labels, pair_counts=counts, world=world)
    desc = f'train_aff{"/" + cfg.stage if cfg.stage else ""} epoch {epoch + 1}/{cfg.aff_num_epoches}'
    return common.train_pairs_one_epoch(model, loader, optimizer, scheduler, device, cfg, desc, loss_of)


def fit(model: Net, dataset: CrfAffinityDataset, cfg: Config, device: torch.device,
        checkpoint_path: Path | None = None) -> dict:
    """The training loop on `dataset` (global batch aff_batch_size split over the ranks); returns the history."""
    loader = common.train_loader(dataset, cfg.aff_batch_size, cfg)
    if len(loader) == 0:
        raise common.BadInputError(f'train list has {len(dataset)} images, fewer than one batch of '
                                   f'{cfg.aff_batch_size}; lower --aff_batch_size')
    model.to(device)
    max_step = (len(dataset) // cfg.aff_batch_size) * cfg.aff_num_epoches
    optimizer, scheduler = torchutils.make_sgd(model.trainable_parameters(), cfg.aff_learning_rate,
                                               cfg.aff_weight_decay, max_step)
    history = common.fit(
        'train_aff', model, model, dataset, loader, optimizer, scheduler, device, cfg, cfg.aff_num_epoches,
        checkpoint_path, lambda wrapped, epoch: train_one_epoch(wrapped, loader, optimizer, scheduler, device, cfg,
                                                                epoch),
        ('bg', 'fg', 'neg'))
    return {'epochs': history, 'max_step': max_step}


def run(cfg: Config) -> dict:
    weights = weights_path(cfg)
    if cfg.relation_weights is not None:
        logger.info('--relation_weights %s given: AffinityNet training skipped, the walk uses these weights',
                    cfg.relation_weights)
        return {'skipped': True, 'weights': str(cfg.relation_weights)}
    if weights.is_file() and not cfg.overwrite:
        logger.info('%s exists: AffinityNet training skipped (--overwrite retrains)', weights)
        return {'skipped': True}
    device = common.device_of(cfg)
    ids = common.train_ids(cfg)
    common.require_outputs(ids, lambda i: crf_dir(cfg) / f'{i}.npz', 'la/ha CRF maps of the train list',
                           'make_relation_labels (make_crf_labels)')
    dataset = CrfAffinityDataset(ids, cfg.dataset_root, crf_dir(cfg), cfg.aff_crop_size, seed=cfg.seed,
                                 num_labels=common.dataset(cfg).num_labels)
    model = build_model(cfg)
    result = fit(model, dataset, cfg, device, cfg.weights_dir / 'aff_checkpoint.pt')
    torchutils.save_checkpoint(weights, model=model.state_dict(), width=model.width, config=cfg.to_json())
    torchutils.barrier()
    return result
