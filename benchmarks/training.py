"""Training throughput of train_cam and train_irn, data wait split from compute, and CDA's sample cost.

Training: the steps' own `train_one_epoch` (step/train_cam.py, step/train_irn.py) on the steps' own
loader (`step.common.train_loader`: shuffled, drop-last, `--num_workers` worker processes) over the real
datasets: `ClassificationDataset` for CAM, `AffinityDataset` for IRN with the synthetic ground-truth
masks (SegmentationClass) standing in for the IR labels. Each setting runs warm-up iterations (not
counted: worker start, first allocations), then timed ones; `train_one_epoch` itself splits each
iteration into the wait for the next batch (data) and forward + backward + optimizer step (compute).
Synthetic images are 128x128 (demo) and the same images resized to 375x500, the size of a typical
VOC image (paper); the id list is repeated to fill the iterations.

  demo   the `demo` profile of misc/config.py, whatever it holds now (crop and batch are printed): resnet18
         from scratch, CAM crop 96 (long side 72..128), IRN crop 128 batch 16
  paper  resnet50 with the ImageNet architecture (frozen BN; CAM stage1-2 frozen), random weights in
         place of the downloaded ones; CAM crop 512 batch 16 (long side 320..640); IRN crop 512
         batch 32. Random weights diverge at the paper's lr, so the lr is 1e-5 here: the cost of a
         step does not depend on it. On CPU: 1 warm-up and up to 2 timed iterations (fewer when a
         setting runs past --paper-seconds); skipped by --quick.

CDA: `CDAClassificationDataset.__getitem__` (the original and a pasted version) against the baseline
`ClassificationDataset.__getitem__` (the original only), looped over the same ids in this process with
OpenCV and torch on one thread (as in a DataLoader worker), best of 3 alternating rounds. The object
bank is built by `step.make_object_bank.run` from the synthetic ground truth.
Target: a CDA sample costs at most 2.5x a baseline sample.

Loader (`--loader`, on its own): the CPU cost of one training sample at paper size (375x500 images) of
each training dataset, three paths side by side: today's (float32 samples normalised in the worker, pair
labels as float32 (P, S) tensors), the new one, what a GPU run's workers do (deferred samples: the decode
and the draws, the device rendering the crop bit for bit; irn: compact), and the compact one, what a CPU
run's workers do (uint8 samples kept in PIL until their crop); see docs/performance_loader.md.
`__getitem__` plus its share of the collate, as a DataLoader worker does them, with OpenCV and torch on one
thread, warm caches, the paths alternating round by round, best of `--loader-rounds`. Each line gives the
dataset, `per sample`, today's and the new cost in ms and their ratio, then the compact one; "device work on
the cpu" is the rendering and expansion of those batches measured here on the CPU (on a GPU a few kernels
a sample). Every sample of both other paths is checked against today's (bit-identical; seg: within
misc.cv_resize's stated tolerance, 0 on the CPUs it was measured on). Below 3x, the new path's measured
breakdown (cProfile buckets) is printed.

  cam   ClassificationDataset, crop 512, long side 320-640 (IRNet's CAM)
  cda   CDAClassificationDataset, the same with the pasted image (rotate variant)
  irn   AffinityDataset, crop 512, scale 0.5-1.5, pair labels radius 10 at stride 4
  aff   CrfAffinityDataset, crop 448, colour jitter, pair labels radius 5 at stride 8 (soft la/ha maps made
        from the ground truth, blurred, float16 compressed as make_crf_labels writes them)
  seam  ClassificationDataset, crop 448, long side 448-768, colour jitter (SEAM's CAM)
  seg   SegTrainDataset, DeepLab-v2's input as deeplab-pytorch's VOCAug makes it: crop 321, scales 0.5-1.5,
        flip, mean-BGR

    python benchmarks/training.py [--num-workers 1]    # demo and paper (3 minutes on 2 idle CPU cores)
    python benchmarks/training.py --quick               # demo only, few iterations
    python benchmarks/training.py --loader              # the loader's CPU cost per sample (about a minute)

Timings are wall-clock; on a shared machine check the load average that is printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Dataset, default_collate  # noqa: E402

from misc import device_input, imutils, torchutils  # noqa: E402
from misc.cda import ObjectBank  # noqa: E402
from misc.config import PROFILES, Config  # noqa: E402
from misc.indexing import PathIndex  # noqa: E402
from step import common, make_object_bank, train_cam, train_irn  # noqa: E402
from voc12 import dataloader, synthetic  # noqa: E402
from voc12.aff_dataset import CrfAffinityDataset  # noqa: E402
from voc12.cda_dataset import CDAClassificationDataset  # noqa: E402
from voc12.classes import VOC12  # noqa: E402
from voc12.seg_dataset import SegTrainDataset  # noqa: E402

PAPER_SIZE = (375, 500)                   # (H, W) of a typical VOC image
TARGET_CDA_RATIO = 2.5
PAPER_LR = 1e-5                           # random weights at lr 0.1 give a non-finite loss by step 2
IRN_GB_PER_IMAGE = 0.5                    # CPU peak of an IRN step at crop 512 (0.4 measured at batch 4)


def machine_line(device: torch.device, num_workers: int) -> str:
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    load = ', '.join(f'{x:.2f}' for x in os.getloadavg())
    return (f'machine: torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, '
            f'device {device} ({name}), DataLoader num_workers {num_workers}, load average {load}')


def available_gb() -> float:
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return float('inf')


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20     # Linux: KiB


# ----------------------------------------------------------------------------- data

def make_datasets(tmp: Path, n_images: int) -> tuple[Path, Path, list[str], dict]:
    """Synthetic 128 px dataset and a copy resized to 375x500 (images bicubic, masks nearest)."""
    root = synthetic.generate(tmp / 'voc', n_train=n_images, n_val=0, size=128, seed=0)
    ids = synthetic.image_ids(n_images, 0)[0]
    labels = dataloader.load_image_labels(root, ids)
    paper_root = tmp / 'voc_paper'
    for image_id in ids:
        img = imutils.read_rgb(root / 'JPEGImages' / f'{image_id}.jpg')
        mask = imutils.read_label_png(root / 'SegmentationClass' / f'{image_id}.png')
        imutils.save_rgb(paper_root / 'JPEGImages' / f'{image_id}.jpg', imutils.pil_resize(img, PAPER_SIZE, 3))
        imutils.save_label_png(paper_root / 'SegmentationClass' / f'{image_id}.png',
                               imutils.pil_resize(mask, PAPER_SIZE, 0), VOC12.palette)
    return root, paper_root, ids, labels


def repeat_ids(ids: list[str], n: int) -> list[str]:
    return (ids * (n // len(ids) + 1))[:n]


class Take:
    """The next `n` batches of a shared DataLoader iterator, as a sized iterable for train_one_epoch (with
    the loader's dataset, whose pair labels the step's `misc.device_input.to_device` call needs)."""

    def __init__(self, iterator, n: int, dataset=None):
        self.iterator, self.n, self.dataset = iterator, n, dataset

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield next(self.iterator)


# ----------------------------------------------------------------------------- training steps

def run_iterations(one_epoch, loader, warmup: int, timed: int, budget_s: float) -> dict:
    """Warm-up batches, then up to `timed` batches (at least one; no new one once `budget_s` has passed
    since the start); sums of the timed ones' images, data seconds and total seconds."""
    start = time.perf_counter()
    iterator = iter(loader)
    if warmup:
        one_epoch(Take(iterator, warmup, loader.dataset))
    totals = {'images': 0, 'data_seconds': 0.0, 'seconds': 0.0, 'iterations': 0}
    while totals['iterations'] < timed:
        stats = one_epoch(Take(iterator, 1, loader.dataset))
        for key in ('images', 'data_seconds', 'seconds'):
            totals[key] += stats[key]
        totals['iterations'] += 1
        if time.perf_counter() - start > budget_s:
            break
    del iterator                           # shuts the loader's workers down
    totals['rss'] = peak_rss_gb()
    return totals


def bench_cam(cfg: Config, ids: list[str], labels: dict, device: torch.device, warmup: int, timed: int,
              budget_s: float) -> dict:
    n = (warmup + timed) * cfg.cam_batch_size
    dataset = dataloader.ClassificationDataset(repeat_ids(ids, n), cfg.dataset_root, labels, cfg.cam_resize_long,
                                               cfg.cam_crop_size, cfg.seed)
    loader = common.train_loader(dataset, cfg.cam_batch_size, cfg)
    torch.manual_seed(cfg.seed)
    model = train_cam.build_model(cfg, load_weights=False).to(device)
    if cfg.channels_last and device.type == 'cuda':
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = torchutils.make_sgd(model.trainable_parameters(), cfg.cam_learning_rate,
                                               cfg.cam_weight_decay, warmup + timed)
    one_epoch = lambda batches: train_cam.train_one_epoch(model, batches, optimizer, scheduler,  # noqa: E731
                                                          device, cfg, 0)
    return run_iterations(one_epoch, loader, warmup, timed, budget_s)


def bench_irn(cfg: Config, ids: list[str], device: torch.device, warmup: int, timed: int, budget_s: float) -> dict:
    n = (warmup + timed) * cfg.irn_batch_size
    path_index = PathIndex(radius=10, default_size=(cfg.irn_crop_size // 4, cfg.irn_crop_size // 4))
    dataset = dataloader.AffinityDataset(repeat_ids(ids, n), cfg.dataset_root,
                                         cfg.dataset_root / 'SegmentationClass', cfg.irn_crop_size,
                                         path_index.src_indices, path_index.dst_indices, cfg.irn_rescale, cfg.seed)
    loader = common.train_loader(dataset, cfg.irn_batch_size, cfg)
    module = importlib.import_module(cfg.irn_network)
    torch.manual_seed(cfg.seed)
    # The step copies the backbone from the trained CAM network (or ImageNet); random weights cost the same.
    model = module.Net(backbone=cfg.backbone, pretrained=cfg.pretrained, load_weights=False)
    loss_model = module.AffinityDisplacementLoss(model, path_index).to(device)
    optimizer, scheduler = torchutils.make_sgd(model.trainable_parameters(), cfg.irn_learning_rate,
                                               cfg.irn_weight_decay, warmup + timed)
    one_epoch = lambda batches: train_irn.train_one_epoch(loss_model, batches, optimizer, scheduler,  # noqa: E731
                                                          device, cfg, 0)
    return run_iterations(one_epoch, loader, warmup, timed, budget_s)


# ----------------------------------------------------------------------------- CDA sample cost

def time_getitem(datasets: dict, n: int, rounds: int = 3) -> dict[str, float]:
    """Best seconds per __getitem__ over indices 0..n-1 of each dataset, rounds alternating between them."""
    cv2_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    try:
        for dataset in datasets.values():          # warm-up: page cache, the bank's object cache
            for index in range(n):
                dataset[index]
        best = {name: float('inf') for name in datasets}
        for _ in range(rounds):
            for name, dataset in datasets.items():
                start = time.perf_counter()
                for index in range(n):
                    dataset[index]
                best[name] = min(best[name], (time.perf_counter() - start) / n)
    finally:
        cv2.setNumThreads(cv2_threads)
        torch.set_num_threads(torch_threads)
    return best


def bench_cda(cfg: Config, ids: list[str], labels: dict, n: int) -> tuple[dict, int]:
    """(seconds per sample of baseline and CDA datasets, objects in the bank) at cfg's CAM settings."""
    id_list = cfg.work_dir / 'bank_ids.txt'       # the bank reads the masks of exactly its train list
    id_list.parent.mkdir(parents=True, exist_ok=True)
    id_list.write_text(''.join(f'{i}\n' for i in sorted(set(ids))))
    bank_cfg = dataclasses.replace(cfg, cda_bank_source=cfg.dataset_root / 'SegmentationClass',
                                   train_list=str(id_list), overwrite=True)
    make_object_bank.run(bank_cfg)
    bank = ObjectBank.load(cfg.object_bank_dir)
    ids = repeat_ids(ids, n)
    datasets = {
        'baseline': dataloader.ClassificationDataset(ids, cfg.dataset_root, labels, cfg.cam_resize_long,
                                                     cfg.cam_crop_size, cfg.seed),
        'cda': CDAClassificationDataset(ids, cfg.dataset_root, labels, bank, cfg.cam_resize_long, cfg.cam_crop_size,
                                        seed=cfg.seed, variant=cfg.cda_variant, min_visible=cfg.cda_min_visible),
    }
    return time_getitem(datasets, n), len(bank)


# ----------------------------------------------------------------------------- loader cost per sample

TARGET_LOADER_RATIO = 3.0


class SegSamples(Dataset):
    """The segmentation network's training samples (`voc12.seg_dataset.SegTrainDataset`, DeepLab-v2's mean-BGR
    input, the paper's crop 321 and scales) by position: sample i is the one that iteration 0, slot i draws."""

    compact = False

    def __init__(self, dataset):
        self.dataset = dataset

    @property
    def deferred(self) -> bool:
        return self.dataset.deferred

    @deferred.setter
    def deferred(self, value: bool) -> None:
        self.dataset.deferred = value

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[(index, 0, index)]


def device_step(batch: dict, dataset, normalise) -> dict:
    """What the training step does to a collated batch on its device (here the CPU): `to_device`, or for the
    segmentation network's deferred samples `render_deferred`."""
    cpu = torch.device('cpu')
    if 'seg_src' in batch:
        from voc12.seg_dataset import render_deferred
        inner = dataset.dataset
        img, label = render_deferred(batch, cpu, inner.crop, inner.bgr_mean)
        return {'img': img, 'label': label}
    return device_input.to_device(batch, cpu, getattr(dataset, 'pair_labels', None), normalise)


def write_soft_crf_maps(root: Path, crf_dir: Path, ids: list[str]) -> None:
    """la/ha maps as make_crf_labels writes them (float16, compressed), soft: the ground truth's one-hot
    channels (background, then the image's classes) blurred (sigma 6 px) and renormalised; ha shrinks the
    objects (background power 4)."""
    from misc.crf import save_crf_maps
    for image_id in ids:
        mask = imutils.read_label_png(root / 'SegmentationClass' / f'{image_id}.png')
        keys = np.array(sorted(set(np.unique(mask).tolist()) - {0, 255}), np.int64)
        onehot = np.stack([(mask == 0) | (mask == 255)] + [mask == k for k in keys]).astype(np.float32)
        soft = np.stack([cv2.GaussianBlur(c, (0, 0), 6) for c in onehot]) + 1e-3
        la = soft / soft.sum(axis=0)
        ha = la.copy()
        ha[0] = la[0] ** 0.25
        ha /= ha.sum(axis=0)
        save_crf_maps(crf_dir / f'{image_id}.npz', keys - 1, la, ha)


def build_bank(cfg: Config, ids: list[str]) -> ObjectBank:
    """The object bank of `ids` from the synthetic ground truth (make_object_bank on exactly those ids)."""
    id_list = cfg.work_dir / 'bank_ids.txt'
    id_list.parent.mkdir(parents=True, exist_ok=True)
    id_list.write_text(''.join(f'{i}\n' for i in sorted(set(ids))))
    make_object_bank.run(dataclasses.replace(cfg, cda_bank_source=cfg.dataset_root / 'SegmentationClass',
                                             train_list=str(id_list), overwrite=True))
    return ObjectBank.load(cfg.object_bank_dir)


def loader_datasets(tmp: Path, paper_root: Path, ids: list[str], labels: dict) -> dict[str, tuple]:
    """{name: (make(compact) -> dataset, normalise)} for the six training datasets at paper settings."""
    from step.registry import profile_values
    irn = Config(work_dir=tmp / 'loader', voc12_root=paper_root)
    psa = Config(work_dir=tmp / 'loader', voc12_root=paper_root, **profile_values('affinitynet', 'paper'))
    seam = Config(work_dir=tmp / 'loader', voc12_root=paper_root, **profile_values('seam', 'paper'))
    crf_dir = tmp / 'loader' / 'crf'
    write_soft_crf_maps(paper_root, crf_dir, ids)
    bank = build_bank(irn, ids)
    seg_labels = paper_root / 'SegmentationClass'
    path_index = PathIndex(radius=10, default_size=(irn.irn_crop_size // 4, irn.irn_crop_size // 4))

    def compact_as(dataset, mode: str):
        """mode: 'today' (float32 samples), 'compact' (a CPU run's workers), 'new' (a GPU run's workers:
        deferred where the dataset has it, else compact)."""
        dataset.compact = mode != 'today'
        if hasattr(dataset, 'deferred'):
            dataset.deferred = mode == 'new'
        return dataset

    imagenet = device_input.imagenet_normalise
    return {
        'cam': (lambda c: compact_as(dataloader.ClassificationDataset(
            ids, paper_root, labels, irn.cam_resize_long, irn.cam_crop_size, irn.seed), c), imagenet),
        'cda': (lambda c: compact_as(CDAClassificationDataset(
            ids, paper_root, labels, bank, irn.cam_resize_long, irn.cam_crop_size, seed=irn.seed,
            variant=irn.cda_variant), c), imagenet),
        'irn': (lambda c: compact_as(dataloader.AffinityDataset(
            ids, paper_root, seg_labels, irn.irn_crop_size, path_index.src_indices, path_index.dst_indices,
            irn.irn_rescale, irn.seed), c), imagenet),
        'aff': (lambda c: compact_as(CrfAffinityDataset(ids, paper_root, crf_dir, psa.aff_crop_size, seed=psa.seed), c),
                imagenet),
        'seam': (lambda c: compact_as(dataloader.ClassificationDataset(
            ids, paper_root, labels, seam.cam_resize_long, seam.cam_crop_size, seam.seed,
            jitter=seam.cam_color_jitter), c), imagenet),
        'seg': (lambda c: compact_as(SegSamples(SegTrainDataset(ids, paper_root, seg_labels, 321,
                                                                (0.5, 0.75, 1.0, 1.25, 1.5), True, irn.seed)), c),
                imagenet),
    }


def sample_cost(dataset, n: int, batch: int) -> float:
    """Seconds per sample of __getitem__ + the collate over indices 0..n-1, in batches of `batch`."""
    start = time.perf_counter()
    for first in range(0, n, batch):
        device_input.collate([dataset[i] for i in range(first, min(n, first + batch))])
    return (time.perf_counter() - start) / n


def expand_cost(dataset, normalise, n: int, batch: int) -> float:
    """Seconds per sample of `device_input.to_device` on the CPU for compact batches (collated beforehand)."""
    batches = [device_input.collate([dataset[i] for i in range(first, min(n, first + batch))])
               for first in range(0, n, batch)]
    start = time.perf_counter()
    for b in batches:
        device_step(b, dataset, normalise)
    return (time.perf_counter() - start) / n


def compare_samples(name: str, today, compact, normalise, n: int) -> str:
    """Today's samples against the other path's rendered on the CPU; raises on a difference (seg: beyond
    misc.cv_resize's stated tolerance, 0 on the CPUs it was measured on)."""
    from misc.cv_resize import CV2_ATOL
    worst, keys = 0.0, set()
    for index in range(n):
        old = today[index]
        new = device_step(device_input.collate([compact[index]]), compact, normalise)
        for key, value in old.items():
            if not isinstance(value, torch.Tensor):
                continue
            got = new[key][0]
            if name == 'seg' and key == 'img' and got.shape == value.shape:
                worst = max(worst, float((got - value).abs().max()))
                if worst <= CV2_ATOL:
                    keys.add(key)
                    continue
            if not (got.dtype == value.dtype and torch.equal(got, value)):
                raise AssertionError(f'{name} sample {index}: {key} differs between the paths')
            keys.add(key)
    exact = f'{n} samples bit-identical ({", ".join(sorted(keys))})'
    return exact if worst == 0 else f'{exact[:-1]}; img within {worst:.1e}, tolerance {CV2_ATOL:g})'


BREAKDOWN = (    # (bucket, what cProfile calls it): C calls by tottime, our functions by cumtime
    ('decode', "method 'decode' of 'ImagingDecoder'", 'tottime'),
    ('cv2 decode', '<imread>', 'tottime'),
    ('resize', "method 'resize' of 'ImagingCore'", 'tottime'),
    ('cv2 resize', '<resize>', 'tottime'),
    ('colour jitter', 'color_jitter_image', 'cumtime'),
    ('CRF maps read', 'load_crf_maps', 'cumtime'),
    ('paste', 'paste_object', 'cumtime'),
    ('bank object', 'sample', 'cumtime'),
)


def breakdown(dataset, n: int, batch: int) -> str:
    """Where the compact path's time goes, from cProfile (its overhead inflates 'rest')."""
    import cProfile
    import pstats
    profile = cProfile.Profile()
    profile.enable()
    sample_cost(dataset, n, batch)
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = sum(tt for (_, _, _), (_, _, tt, _, _) in stats.items())
    parts = []
    for bucket, pattern, column in BREAKDOWN:
        value = sum((ct if column == 'cumtime' else tt) for (file, _, func), (_, _, tt, ct, _) in stats.items()
                    if pattern in func and (bucket != 'bank object' or file.endswith('cda.py')))
        if value > 0:
            parts.append((bucket, value))
    rest = total - sum(v for _, v in parts)
    parts.append(('rest', rest))
    return ', '.join(f'{b} {v / n * 1e3:.2f} ms ({v / total:.0%})' for b, v in parts)


def main_loader(args) -> int:
    print(machine_line(torch.device('cpu'), 0))
    n, batch, rounds = args.loader_samples, 8, args.loader_rounds
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, paper_root, ids, labels = make_datasets(tmp, n)
        makers = loader_datasets(tmp, paper_root, ids, labels)
        cv2_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
        cv2.setNumThreads(1)                  # as common.init_train_worker; torch: as in a DataLoader worker
        torch.set_num_threads(1)
        try:
            paths = ('today', 'compact', 'new')
            sets = {name: ({path: make(path) for path in paths}, normalise) for name, (make, normalise) in makers.items()}
            checks = {name: '; '.join(f'{path}: ' + compare_samples(name, made['today'], made[path], normalise, n)
                                      for path in paths[1:])
                      for name, (made, normalise) in sets.items()}
            best = {(name, path): float('inf') for name in sets for path in paths}
            for _ in range(rounds):           # alternating rounds: every path sees the same machine load
                for name, (made, _) in sets.items():
                    for path in paths:
                        best[name, path] = min(best[name, path], sample_cost(made[path], n, batch))
            device_work = {(name, path): min(expand_cost(made[path], normalise, n, batch) for _ in range(3))
                           for name, (made, normalise) in sets.items() for path in paths[1:]}
            slow = {name: breakdown(made['new'], n, batch) for name, (made, _) in sets.items()
                    if best[name, 'today'] / best[name, 'new'] < TARGET_LOADER_RATIO}
            deferred = {name: any(key.endswith('_src') for key in made['new'][0]) for name, (made, _) in sets.items()}
        finally:
            cv2.setNumThreads(cv2_threads)
            torch.set_num_threads(torch_threads)
    print(f'loader: CPU ms of one training sample at paper size ({PAPER_SIZE[0]}x{PAPER_SIZE[1]} images), '
          f'__getitem__ + collate share, 1 thread, {n} ids, batches of {batch}, best of {rounds} alternating rounds')
    print('  today: float32 samples; new: what a GPU run\'s workers do (deferred: decode and draws, the device '
          'resizes, jitters, crops; irn: compact); compact: what a CPU run\'s workers do')
    met = []
    for name in sets:
        old, new, compact = (best[name, path] * 1e3 for path in ('today', 'new', 'compact'))
        ratio = old / new
        met.append(ratio >= TARGET_LOADER_RATIO)
        print(f'{name:<5} per sample  today {old:7.2f} ms  new {new:6.2f} ms  {ratio:5.2f}x  '
              f'({"deferred" if deferred[name] else "compact"}; device work on the cpu '
              f'{device_work[name, "new"] * 1e3:.2f} ms)   compact {compact:6.2f} ms {old / compact:5.2f}x '
              f'(device work on the cpu {device_work[name, "compact"] * 1e3:.2f} ms)')
    print('same training inputs (each path rendered on the CPU against today\'s):')
    for name, text in checks.items():
        print(f'  {name:<5} {text}')
    for name, text in slow.items():
        print(f'  {name} below {TARGET_LOADER_RATIO:g}x, new path: {text}')
    print(f'target: each dataset at most 1/{TARGET_LOADER_RATIO:g} of today\'s CPU per sample: '
          f'{sum(met)} of {len(met)} met; load average {", ".join(f"{x:.2f}" for x in os.getloadavg())}')
    return 0


# ----------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='demo only, 1 warm-up + 2 timed iterations')
    parser.add_argument('--num-workers', '--num_workers', type=int, default=1, help='DataLoader workers (default 1)')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    parser.add_argument('--amp', action='store_true', help='autocast on CUDA')
    parser.add_argument('--channels-last', action='store_true', help='channels_last on CUDA (CAM)')
    parser.add_argument('--iters', type=int, default=None,
                        help='timed demo iterations (default 8 on CPU, 20 on CUDA; quick 2)')
    parser.add_argument('--paper-iters', type=int, default=None, help='timed paper iterations (default 2 on CPU, '
                        '10 on CUDA)')
    parser.add_argument('--paper-seconds', type=float, default=60.0,
                        help='no new timed paper iteration once a paper setting has run this long (CPU)')
    parser.add_argument('--cda-samples', type=int, default=None, help='ids per getitem round (default 64, quick 16)')
    parser.add_argument('--loader', action='store_true', help='only the loader\'s CPU cost per sample, '
                        'today\'s path against the compact one')
    parser.add_argument('--loader-samples', type=int, default=16, help='ids per loader round (default 16)')
    parser.add_argument('--loader-rounds', type=int, default=5, help='alternating loader rounds (default 5)')
    args = parser.parse_args()
    if args.loader:
        return main_loader(args)

    device = torchutils.select_device(args.device)
    cuda = device.type == 'cuda'
    demo_iters = args.iters or (2 if args.quick else (20 if cuda else 8))
    paper_iters = args.paper_iters or (10 if cuda else 2)
    cda_samples = args.cda_samples or (16 if args.quick else 64)
    print(machine_line(device, args.num_workers))

    rows, cda_rows, notes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, paper_root, ids, labels = make_datasets(tmp, 48)
        common_kw = dict(device=args.device, num_workers=args.num_workers, amp=args.amp,
                         channels_last=args.channels_last, seed=0)
        demo = Config(work_dir=tmp / 'demo', voc12_root=root, **{**PROFILES['demo'], **common_kw})
        paper = Config(work_dir=tmp / 'paper', voc12_root=paper_root, backbone='resnet50', pretrained='imagenet',
                       cam_learning_rate=PAPER_LR, irn_learning_rate=PAPER_LR, **common_kw)

        settings = [('demo', demo, demo_iters, float('inf'))]
        if args.quick:
            notes.append('paper settings skipped (--quick)')
        else:
            settings.append(('paper', paper, paper_iters, float('inf') if cuda else args.paper_seconds))
        for name, cfg, timed, budget in settings:
            stats = bench_cam(cfg, ids, labels, device, 1, timed, budget)
            rows.append((name, 'train_cam', cfg.backbone, cfg.cam_crop_size, cfg.cam_batch_size, stats))
            gc.collect()
            needed = IRN_GB_PER_IMAGE * cfg.irn_batch_size + 2
            if not cuda and needed > available_gb():
                notes.append(f'{name} train_irn skipped: needs about {needed:.0f} GB of memory, '
                             f'{available_gb():.1f} GB available')
                continue
            stats = bench_irn(cfg, ids, device, 1, timed, budget)
            rows.append((name, 'train_irn', cfg.backbone, cfg.irn_crop_size, cfg.irn_batch_size, stats))
            gc.collect()

        for name, cfg, n in (('demo', demo, cda_samples), ('paper', paper, max(8, cda_samples // 2))):
            seconds, objects = bench_cda(cfg, ids, labels, n)
            size = '128x128' if name == 'demo' else f'{PAPER_SIZE[0]}x{PAPER_SIZE[1]}'
            cda_rows.append((name, size, cfg.cam_resize_long, cfg.cam_crop_size, n, objects, seconds))

    print('training throughput (train_one_epoch of each step; data = waiting on the DataLoader, '
          'compute = forward + backward + step)')
    print(f'{"setting":<7} {"step":<10} {"backbone":<9} {"crop":>4} {"batch":>5} {"iters":>5} {"img/s":>8} '
          f'{"data-wait":>9} {"data s/it":>9} {"compute s/it":>12} {"peak RSS":>8}')
    for name, step, backbone, crop, batch, s in rows:
        iters = s['iterations']
        print(f'{name:<7} {step:<10} {backbone:<9} {crop:>4} {batch:>5} {"1+" + str(iters):>5} '
              f'{s["images"] / s["seconds"]:>8.2f} {s["data_seconds"] / s["seconds"]:>9.1%} '
              f'{s["data_seconds"] / iters:>9.3f} {(s["seconds"] - s["data_seconds"]) / iters:>12.3f} '
              f'{s["rss"]:>6.1f}GB')
    print('  (iters: warm-up + timed; peak RSS: this process, so far)')
    for note in notes:
        print(f'  {note}')

    print('CDA vs baseline dataset, __getitem__ in one process (1 thread), best of 3 rounds')
    print(f'{"setting":<7} {"image":<8} {"long side":<9} {"crop":>4} {"ids":>4} {"bank":>4} '
          f'{"baseline/s":>10} {"CDA/s":>7} {"ms base":>7} {"ms CDA":>7} {"ratio":>6}')
    ratios = []
    for name, size, resize_long, crop, n, objects, seconds in cda_rows:
        ratio = seconds['cda'] / seconds['baseline']
        ratios.append(f'{name} {ratio:.2f}x')
        print(f'{name:<7} {size:<8} {f"{resize_long[0]}..{resize_long[1]}":<9} {crop:>4} {n:>4} {objects:>4} '
              f'{1 / seconds["baseline"]:>10.1f} {1 / seconds["cda"]:>7.1f} {seconds["baseline"] * 1e3:>7.2f} '
              f'{seconds["cda"] * 1e3:>7.2f} {ratio:>5.2f}x')
    met = all(r[6]['cda'] / r[6]['baseline'] <= TARGET_CDA_RATIO for r in cda_rows)
    print(f'target: a CDA sample (original + pasted) costs at most {TARGET_CDA_RATIO}x a baseline sample: '
          f'{"met" if met else "NOT met"} ({", ".join(ratios)})')
    return 0 if met else 1


if __name__ == '__main__':
    sys.exit(main())
