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

    python benchmarks/training.py [--num-workers 1]    # demo and paper (3 minutes on 2 idle CPU cores)
    python benchmarks/training.py --quick               # demo only, few iterations

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
import torch  # noqa: E402

from misc import imutils, torchutils  # noqa: E402
from misc.cda import ObjectBank  # noqa: E402
from misc.config import PROFILES, Config  # noqa: E402
from misc.indexing import PathIndex  # noqa: E402
from step import common, make_object_bank, train_cam, train_irn  # noqa: E402
from voc12 import dataloader, synthetic  # noqa: E402
from voc12.cda_dataset import CDAClassificationDataset  # noqa: E402
from voc12.classes import VOC12  # noqa: E402

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
    """The next `n` batches of a shared DataLoader iterator, as a sized iterable for train_one_epoch."""

    def __init__(self, iterator, n: int):
        self.iterator, self.n = iterator, n

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
        one_epoch(Take(iterator, warmup))
    totals = {'images': 0, 'data_seconds': 0.0, 'seconds': 0.0, 'iterations': 0}
    while totals['iterations'] < timed:
        stats = one_epoch(Take(iterator, 1))
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
    args = parser.parse_args()

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
