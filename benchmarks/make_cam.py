"""Time CAM inference (`step.make_cam.compute_cams`) against a naive per-flip, all-class baseline.

`compute_cams` sends each scale's image and its flip through the network as one batch of 2 and applies
the classifier to the image's classes only. The baseline, written here, does it the naive way: image
and flip as two forward passes of batch 1, all 20 class maps computed, resized and summed, and the
image's classes selected at the end (then normalised, as the reference does). Both get the same
pyramids, built beforehand by `MultiScaleDataset` (image decoding and resizing are not timed), and
must give the same CAMs (np.allclose on the strided and the high-res maps).

Settings:
  demo   synthetic 128 px images, scales 1.0 0.5 1.5; resnet18 and resnet50
  paper  375x500 images (the synthetic ones resized), scales 1.0 0.5 1.5 2.0; resnet50
Networks are randomly initialised (`pretrained='none'`, eval mode): the speed does not depend on the
weights. On CUDA, autocast (`--amp`) and channels_last are timed too, with the largest difference of
their CAMs from the fp32 ones.

    python benchmarks/make_cam.py            # demo 24 images (best of 2), paper 2 images (+1 warm-up)
    python benchmarks/make_cam.py --quick    # demo 4 images, paper 1 image without warm-up

Timings are wall-clock; on a shared machine check the load average that is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from misc import imutils, torchutils  # noqa: E402
from net.resnet50_cam import Net  # noqa: E402
from step.make_cam import compute_cams  # noqa: E402
from voc12 import dataloader, synthetic  # noqa: E402

DEMO_SCALES = (1.0, 0.5, 1.5)
PAPER_SCALES = (1.0, 0.5, 1.5, 2.0)
PAPER_SIZE = (375, 500)                  # (H, W) of a typical VOC image
# CAMs are normalised to [0, 1]; batch 2 vs batch 1 only changes the order of float additions.
# A wrong flip or class gives differences of order 0.1..1. On CUDA the check runs without TF32.
ATOL = {'cpu': 1e-4, 'cuda': 1e-3}


def machine_line(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    load = ', '.join(f'{x:.2f}' for x in os.getloadavg())
    return (f'machine: torch {torch.__version__}, {torch.get_num_threads()} torch threads, '
            f'{os.cpu_count()} CPUs, device {device} ({name}), load average {load}')


# ----------------------------------------------------------------------------- the naive baseline

@torch.no_grad()
def naive_cams(model, pyramid, keys: np.ndarray, size, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Image and flip as separate batch-1 passes, all 20 classes fused, then the image's classes kept."""
    outputs = []
    for pair in pyramid:                                           # (2, 3, h_s, w_s)
        maps = [F.relu(F.conv2d(model.features(pair[i:i + 1].to(device)), model.classifier.weight))[0]
                for i in range(2)]                                 # each (20, h_s/16, w_s/16)
        outputs.append(maps[0] + maps[1].flip(-1))
    strided_size = imutils.strided_size(size, 4)
    up_size = imutils.strided_up_size(size, 16)
    strided = torch.sum(torch.stack([F.interpolate(o[None], strided_size, mode='bilinear', align_corners=False)[0]
                                     for o in outputs]), 0)
    high_res = torch.sum(torch.stack([F.interpolate(o[:, None], up_size, mode='bilinear', align_corners=False)
                                      for o in outputs]), 0)[:, 0, :size[0], :size[1]]
    valid = torch.as_tensor(keys, dtype=torch.long, device=device)
    strided, high_res = strided[valid], high_res[valid]
    strided = strided / (F.adaptive_max_pool2d(strided, (1, 1)) + 1e-5)
    high_res = high_res / (F.adaptive_max_pool2d(high_res, (1, 1)) + 1e-5)
    return strided.cpu().numpy(), high_res.cpu().numpy()


# ----------------------------------------------------------------------------- inputs

def make_datasets(tmp: Path, n_images: int, n_paper: int) -> tuple[Path, Path, list[str], dict]:
    """Synthetic 128 px images, the first `n_paper` of them also resized to 375x500; ids with a class."""
    root = synthetic.generate(tmp / 'voc', n_train=n_images, n_val=0, size=128, seed=0)
    ids = synthetic.image_ids(n_images, 0)[0]
    labels = dataloader.load_image_labels(root, ids)
    ids = [i for i in ids if labels[i].sum() > 0]
    paper_root = tmp / 'voc_paper'
    for image_id in ids[:n_paper]:
        img = imutils.read_rgb(root / 'JPEGImages' / f'{image_id}.jpg')
        imutils.save_rgb(paper_root / 'JPEGImages' / f'{image_id}.jpg', imutils.pil_resize(img, PAPER_SIZE, 3))
    return root, paper_root, ids, labels


def load_inputs(root: Path, ids: list[str], labels: dict, scales) -> list[tuple]:
    """(pyramid, keys, size) of each image, as make_cam feeds compute_cams."""
    dataset = dataloader.MultiScaleDataset(ids, root, labels, scales)
    inputs = []
    for pack in dataset:
        inputs.append((pack['img'], np.nonzero(pack['label'].numpy())[0], pack['size']))
    return inputs


# ----------------------------------------------------------------------------- timing

def timed(fn, inputs, warmup: bool) -> tuple[float, list]:
    """Seconds per image over `inputs` (after one untimed image when `warmup`) and the outputs."""
    if warmup:
        fn(*inputs[0])
    start = time.perf_counter()
    outputs = [fn(*item) for item in inputs]
    return (time.perf_counter() - start) / len(inputs), outputs


def timed_pair(fn_a, fn_b, inputs, warmup: bool, rounds: int) -> tuple[float, list, float, list]:
    """Best seconds per image of two functions over `rounds` alternating rounds, and their outputs."""
    best_a = best_b = float('inf')
    for _ in range(rounds):
        seconds_a, out_a = timed(fn_a, inputs, warmup)
        seconds_b, out_b = timed(fn_b, inputs, warmup)
        best_a, best_b = min(best_a, seconds_a), min(best_b, seconds_b)
    return best_a, out_a, best_b, out_b


@contextlib.contextmanager
def full_fp32():
    """CUDA matmuls and convolutions in full fp32 (no TF32) inside the block."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def max_diff(a: list, b: list) -> float:
    return max(float(np.abs(x - y).max()) for pa, pb in zip(a, b) for x, y in zip(pa, pb))


def all_close(a: list, b: list, atol: float) -> bool:
    return all(np.allclose(x, y, rtol=1e-4, atol=atol) for pa, pb in zip(a, b) for x, y in zip(pa, pb))


def bench_setting(name: str, backbone: str, scales, inputs: list[tuple], device: torch.device, warmup: bool,
                  rounds: int, rows: list, cuda_rows: list) -> bool:
    """Time ours vs naive (and the CUDA variants) on `inputs`; append table rows; True if they agree."""
    torch.manual_seed(0)
    model = Net(backbone=backbone, pretrained='none', load_weights=False).to(device).eval()

    ours = functools.partial(compute_cams, model, device=device)
    naive = functools.partial(naive_cams, model, device=device)
    t_naive, out_naive, t_ours, out_ours = timed_pair(naive, ours, inputs, warmup, rounds)
    if device.type == 'cuda':
        # Timed with CUDA's defaults (TF32 convolutions); compared in full fp32, where a batch of 2 and
        # two batches of 1 agree as closely as on the CPU: TF32 rounds each of ResNet-50's layers to
        # 10 mantissa bits, and different kernels round differently (0.02 apart at the end).
        with full_fp32():
            check_naive, check_ours = [naive(*item) for item in inputs], [ours(*item) for item in inputs]
    else:
        check_naive, check_ours = out_naive, out_ours
    diff = max_diff(check_ours, check_naive)
    agree = all_close(check_ours, check_naive, ATOL[device.type])
    rows.append((name, backbone, len(inputs), ','.join(f'{s:g}' for s in scales), 1 / t_naive, 1 / t_ours,
                 t_naive / t_ours, diff, agree))

    if device.type == 'cuda':
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        inputs_cl = [([p.contiguous(memory_format=torch.channels_last) for p in pyr], keys, size)
                     for pyr, keys, size in inputs]
        variants = (
            ('fp32', model, inputs, False),
            ('amp', model, inputs, True),
            ('channels_last', model_cl, inputs_cl, False),
            ('amp+channels_last', model_cl, inputs_cl, True),
        )
        for label, net, data, amp in variants:
            seconds, outputs = timed(functools.partial(compute_cams, net, device=device, amp=amp), data, warmup=True)
            cuda_rows.append((name, backbone, label, 1 / seconds, t_ours / seconds, max_diff(outputs, out_ours)))
    return agree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='a few images, seconds to run (no paper warm-up)')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    parser.add_argument('--demo-images', type=int, default=None, help='timed demo images (default 24, quick 4)')
    parser.add_argument('--paper-images', type=int, default=None, help='timed 375x500 images (default 2, quick 1)')
    args = parser.parse_args()
    device = torchutils.select_device(args.device)
    n_demo = args.demo_images or (4 if args.quick else 24)
    n_paper = args.paper_images or (1 if args.quick else 2)
    paper_warmup = not args.quick
    if device.type == 'cuda':
        n_demo, n_paper, paper_warmup = max(n_demo, 32), max(n_paper, 8), True

    print(machine_line(device))
    rows, cuda_rows, ok = [], [], True
    with tempfile.TemporaryDirectory() as tmp:
        # a few spare images: some synthetic images carry no class (the ignore band covers them)
        root, paper_root, ids, labels = make_datasets(Path(tmp), n_demo + 4, n_paper)
        demo_inputs = load_inputs(root, ids[:n_demo], labels, DEMO_SCALES)
        paper_inputs = load_inputs(paper_root, ids[:n_paper], labels, PAPER_SCALES)
        for backbone in ('resnet18', 'resnet50'):
            ok &= bench_setting('demo', backbone, DEMO_SCALES, demo_inputs, device, True, 2, rows, cuda_rows)
        ok &= bench_setting('paper', 'resnet50', PAPER_SCALES, paper_inputs, device, paper_warmup, 1, rows,
                            cuda_rows)

    print(f'CAM inference per image (compute_cams) vs the naive baseline (image and flip as two batch-1 passes, '
          f'all 20 classes before selecting); demo: best of 2 rounds, paper: 1 round'
          f'{" without warm-up" if not paper_warmup else ""}')
    print(f'{"setting":<8} {"backbone":<9} {"images":>6} {"scales":<12} {"naive img/s":>11} {"ours img/s":>10} '
          f'{"speed-up":>8} {"max |diff|":>10} {"allclose":>8}')
    for name, backbone, n, scales, naive, ours, ratio, diff, agree in rows:
        size = '128x128' if name == 'demo' else f'{PAPER_SIZE[0]}x{PAPER_SIZE[1]}'
        print(f'{name:<8} {backbone:<9} {n:>6} {scales:<12} {naive:>11.2f} {ours:>10.2f} {ratio:>7.2f}x '
              f'{diff:>10.2e} {"yes" if agree else "NO":>8}   ({size})')
    if cuda_rows:
        print('CUDA variants of compute_cams (img/s, speed-up over fp32 compute_cams, max |CAM - fp32 CAM|)')
        print(f'{"setting":<8} {"backbone":<9} {"variant":<18} {"img/s":>8} {"vs fp32":>8} {"max |diff|":>10}')
        for name, backbone, label, rate, ratio, diff in cuda_rows:
            print(f'{name:<8} {backbone:<9} {label:<18} {rate:>8.2f} {ratio:>7.2f}x {diff:>10.2e}')
    else:
        print('CUDA variants (--amp, channels_last): skipped, no CUDA device')
    print(f'ours and the naive baseline agree (np.allclose, atol {ATOL[device.type]:g}): {"yes" if ok else "NO"}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
