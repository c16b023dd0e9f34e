"""Time the IR-label step (`step.cam_to_ir_label.run`, two dense CRFs per image) on 1 and 2 processes.

The step spreads images over a spawn-started process pool when `--num_workers` > 1, so its speed-up
includes the pool's start (each worker imports the step, and with it torch). Inputs are a synthetic
VOC dataset and CAM files written here in make_cam's format (`cam/<id>.npz` with `keys`, `cam`,
`high_res`): plausible CAMs made from the ground-truth masks (each present class's mask blurred,
plus smooth noise, normalised to max 1), so no network has to be trained. Each worker count runs in
its own work dir from the same CAMs; the IR label PNGs of the two must be identical.

    python benchmarks/crf.py            # 48 images of 256 px, best of 2 runs per worker count
    python benchmarks/crf.py --quick    # 8 images, 1 run each

Timings are wall-clock; on a shared machine check the load average that is printed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Project modules (and torch) are imported inside the functions: the pool's spawned workers re-import
# this file as their main module, and should pay only what the step itself costs them.
import numpy as np  # noqa: E402

WORKER_COUNTS = (1, 2)


def machine_line() -> str:
    import torch
    load = ', '.join(f'{x:.2f}' for x in os.getloadavg())
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return (f'machine: torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, '
            f'device {device} (the CRF runs on the CPU), load average {load}')


def plausible_cams(mask: np.ndarray, keys: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """GT label map (H, W) and class indices (K,) -> strided (K, h/4, w/4) and high-res (K, H, W) CAMs.

    Each class: its mask blurred (so the CAM peaks inside the object and fades past its edge), plus
    low-frequency noise (false activations in the background), clipped at 0, divided by its max.
    """
    import cv2
    from misc import imutils

    height, width = mask.shape
    sigma = max(height, width) / 24
    high_res = []
    for key in keys:
        cam = cv2.GaussianBlur((mask == key + 1).astype(np.float32), (0, 0), sigma)
        noise = cv2.resize(rng.random((height // 16 + 1, width // 16 + 1), dtype=np.float32), (width, height),
                           interpolation=cv2.INTER_CUBIC)
        cam = np.maximum(cam * rng.uniform(0.7, 1.0) + 0.25 * noise - 0.1, 0)
        high_res.append(cam / (cam.max() + 1e-5))
    high_res = np.stack(high_res).astype(np.float32)
    h4, w4 = imutils.strided_size((height, width), 4)
    strided = np.stack([cv2.resize(c, (w4, h4), interpolation=cv2.INTER_AREA) for c in high_res])
    strided = strided / (strided.max(axis=(1, 2), keepdims=True) + 1e-5)
    return strided.astype(np.float32), high_res


def make_inputs(tmp: Path, n_images: int, size: int) -> tuple[Path, Path, Path, list[str]]:
    """Synthetic dataset, a list file of the images with a class, and their CAM files in `tmp/cams`."""
    from misc import imutils
    from voc12 import dataloader, synthetic

    root = synthetic.generate(tmp / 'voc', n_train=n_images + 8, n_val=0, size=size, seed=0)
    ids = synthetic.image_ids(n_images + 8, 0)[0]
    labels = dataloader.load_image_labels(root, ids)
    ids = [i for i in ids if labels[i].sum() > 0][:n_images]     # the ignore band hides a few images' objects
    list_path = tmp / 'train.txt'
    list_path.write_text(''.join(f'{i}\n' for i in ids))
    cam_dir = tmp / 'cams'
    for index, image_id in enumerate(ids):
        keys = np.nonzero(labels[image_id])[0].astype(np.int64)
        mask = dataloader.load_gt_mask(root, image_id)
        strided, high_res = plausible_cams(mask, keys, np.random.default_rng((0, index)))
        imutils.save_npz(cam_dir / f'{image_id}.npz', keys=keys, cam=strided, high_res=high_res)
    return root, list_path, cam_dir, ids


def time_step(root: Path, list_path: Path, cam_dir: Path, work_dir: Path, workers: int) -> float:
    """Seconds of one cam_to_ir_label.run over the list, from the CAMs in `cam_dir`."""
    from misc.config import Config
    from step import cam_to_ir_label

    cfg = Config(work_dir=work_dir, voc12_root=root, train_list=str(list_path), num_workers=workers,
                 overwrite=True)
    if not cfg.cam_dir.is_dir():
        shutil.copytree(cam_dir, cfg.cam_dir)
    start = time.perf_counter()
    result = cam_to_ir_label.run(cfg)
    elapsed = time.perf_counter() - start
    assert result['images'] == len(list_path.read_text().split())
    return elapsed


def worker_start_seconds() -> float:
    """Seconds for a fresh interpreter to import the step: what each spawned pool worker pays first."""
    import subprocess
    code = f'import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); import step.cam_to_ir_label'
    start = time.perf_counter()
    subprocess.run([sys.executable, '-c', code], check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='8 images, one run per worker count')
    parser.add_argument('--images', type=int, default=None, help='images (default 48, quick 8)')
    parser.add_argument('--size', type=int, default=256, help='image side in pixels')
    parser.add_argument('--repeats', type=int, default=None,
                        help='runs per worker count, the best kept (default 2, quick 1)')
    args = parser.parse_args()
    n_images = args.images or (8 if args.quick else 48)
    repeats = args.repeats or (1 if args.quick else 2)

    from misc import imutils

    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root, list_path, cam_dir, ids = make_inputs(tmp, n_images, args.size)
        seconds = {k: [] for k in WORKER_COUNTS}
        for _ in range(repeats):                 # alternate, so a load change hits both counts alike
            for workers in WORKER_COUNTS:
                seconds[workers].append(time_step(root, list_path, cam_dir, tmp / f'work{workers}', workers))
        labels = {k: [imutils.read_label_png(tmp / f'work{k}' / 'relation_label' / f'{i}.png') for i in ids]
                  for k in WORKER_COUNTS}
        identical = all(np.array_equal(a, b) for a, b in zip(*labels.values()))
        stacked = np.stack(labels[WORKER_COUNTS[0]])
        shares = [np.mean((stacked >= 1) & (stacked <= 20)), np.mean(stacked == 0), np.mean(stacked == 255)]

    start_cost = worker_start_seconds()
    best = {k: min(v) for k, v in seconds.items()}
    speedup = best[1] / best[2]
    print(f'cam_to_ir_label.run: {len(ids)} images of {args.size}x{args.size}, 2 dense CRFs each (10 iterations), '
          f'best of {repeats} run(s); IR labels {shares[0]:.0%} foreground, {shares[1]:.0%} background, '
          f'{shares[2]:.0%} unknown')
    print(f'{"num_workers":>11} {"seconds":>8} {"img/s":>7} {"runs (s)":<20}')
    for workers in WORKER_COUNTS:
        runs = ' '.join(f'{s:.2f}' for s in seconds[workers])
        print(f'{workers:>11} {best[workers]:>8.2f} {len(ids) / best[workers]:>7.2f} {runs:<20}')
    print(f'speed-up of 2 workers over 1: {speedup:.2f}x (the ideal on 2 cores is 2x; the pool start is included: '
          f'a fresh interpreter takes {start_cost:.2f} s to import the step, torch included)')
    print(f'IR labels identical for 1 and 2 workers: {"yes" if identical else "NO"}')
    return 0 if identical else 1


if __name__ == '__main__':
    sys.exit(main())
