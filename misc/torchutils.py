"""Training plumbing: devices, seeds, the poly schedule, checkpoints, and rank-aware helpers.

The distributed helpers are no-ops in a single process, so every step reads the same either way;
under `torchrun` they use the process group that `init_distributed` starts (NCCL on GPUs, gloo on CPU).
"""
from __future__ import annotations

import logging
import os
import random
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from misc import imutils

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- distributed

def init_distributed(device: torch.device) -> None:
    """Join the torchrun process group when launched by torchrun; nothing otherwise."""
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ and not dist.is_initialized():
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        if device.type == 'cuda':
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
        dist.init_process_group(backend=backend)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        backend_device = tensor.device
        if dist.get_backend() == 'nccl' and tensor.device.type != 'cuda':
            tensor = tensor.cuda()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor = tensor.to(backend_device)
    return tensor


def shard(items: Sequence, rank_: int | None = None, world: int | None = None) -> list:
    """This rank's share of `items` (every world-th item), for inference split by image."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return list(items[rank_::world])


# ----------------------------------------------------------------------------- devices and seeds

def select_device(name: str) -> torch.device:
    if name == 'cuda' or (name == 'auto' and torch.cuda.is_available()):
        index = int(os.environ.get('LOCAL_RANK', 0)) if 'LOCAL_RANK' in os.environ else 0
        return torch.device('cuda', index)
    return torch.device('cpu')


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')


@contextmanager
def global_random_state_kept():
    """Run a block and then put the global random states (Python, numpy, torch CPU and CUDA) back as they were.
    Steps added late to a pass (the segmentation network's) use it, so that the steps after them (the CDA pass's
    CAM network, initialised from the global state) draw what they drew before those steps existed."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when asked (fp16 where bf16 is unsupported); nothing on CPU."""
    if not enabled or device.type != 'cuda':
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast('cuda', dtype=dtype)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: torch seeds its workers; numpy's global generator is seeded too so that
    code using it (none of ours: samples carry their own generators) still repeats."""
    np.random.seed(torch.initial_seed() % 2 ** 32)


# ----------------------------------------------------------------------------- optimisation

def poly_lambda(max_step: int, power: float = 0.9):
    """lr multiplier at step t: (1 - t/max_step)^power, then kept at its last value once t reaches
    max_step (the reference's PolyOptimizer stops updating the lr there)."""
    max_step = max(1, int(max_step))

    def factor(step: int) -> float:
        return (1 - min(step, max_step - 1) / max_step) ** power
    return factor


def make_sgd(param_groups: Sequence[Iterable[torch.nn.Parameter]], lr: float, weight_decay: float,
             max_step: int, lr_multipliers: Sequence[float] = (1, 10)):
    """Plain SGD (no momentum) with per-group lr multipliers and the per-iteration poly schedule.

    The reference passes weight decay positionally into SGD's momentum slot (momentum 1e-4, effectively
    none); momentum is 0 here, weight decay is applied as weight decay.
    """
    groups = [{'params': list(params), 'lr': lr * mult, 'weight_decay': weight_decay}
              for params, mult in zip(param_groups, lr_multipliers)]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.0, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(max_step))
    return optimizer, scheduler


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, 'module') else model


# ----------------------------------------------------------------------------- checkpoints

def rng_states() -> dict:
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_checkpoint(path: Path, **payload) -> None:
    """torch.save through a temporary file, on the main process only."""
    if not is_main_process():
        return
    with imutils.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def save_epoch_checkpoint(path: Path, model, optimizer, scheduler, epoch: int, config_json: str) -> None:
    """Everything `--resume` needs to go on after `epoch` (0-based) as if never stopped."""
    save_checkpoint(path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), epoch=epoch, rng=rng_states(), config=config_json)


def resume_training(path: Path, model, optimizer, scheduler) -> int:
    """Restore an epoch checkpoint into the given objects; returns the epoch to start from."""
    state = load_checkpoint(path)
    model.load_state_dict(state['model'])
    optimizer.load_state_dict(state['optimizer'])
    scheduler.load_state_dict(state['scheduler'])
    set_rng_states(state['rng'])
    logger.info('resumed from %s after epoch %d', path, state['epoch'] + 1)
    return state['epoch'] + 1


def wrap_ddp(model: torch.nn.Module, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
    """DistributedDataParallel under torchrun (SyncBatchNorm first if asked, CUDA only); else the model."""
    if not is_distributed():
        return model
    if sync_bn and device.type == 'cuda':
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda'
                                                     else None)


def load_checkpoint(path: Path, map_location='cpu') -> dict:
    # Our own checkpoints hold RNG states (numpy tuples) besides tensors, hence weights_only=False;
    # they are only ever read from the run's own work dir.
    return torch.load(path, map_location=map_location, weights_only=False)
