"""Time `misc.indexing.propagate_to_edge` (sparse walk) against the reference's dense N x N random walk.

The dense baseline is the reference's computation, written here: the dense affinity matrix of all
pixel pairs within the radius (built from PathIndex and edge_to_affinity on the boundary map padded
with 1, as the reference does), raised to beta, column-normalised, squared exp_times times, and
multiplied by the CAMs. It is kept lean (pow and normalisation in place, so its peak is about two
N x N matrices; the reference holds four). Both run on the CPU, each in a fresh interpreter so that
the peak resident memory (VmHWM in /proc/self/status) of one is not hidden by the other; the peak is
reported as the rise above the resident size just before the call. Inputs are synthetic: a boundary
map of blurred Voronoi cell borders plus noise, and Gaussian-blob CAMs.

    python benchmarks/random_walk.py            # 32x32, 64x64, 94x125; ours also at 128x128
    python benchmarks/random_walk.py --full     # dense at 128x128 too (2 GB, many minutes)
    python benchmarks/random_walk.py --quick    # sizes up to 64x64 only

94x125 is the stride-4 feature map of a 375x500 VOC image. The dense baseline there takes minutes on
a 2-core CPU. Timings are wall-clock; on a shared machine check the load average that is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SIZES = ((32, 32), (64, 64), (94, 125), (128, 128))
QUICK_MAX_PIXELS = 64 * 64
DENSE_MAX_PIXELS = 94 * 125              # larger dense runs only with --full
TARGET_SPEEDUP = 100.0                   # at 94x125
TARGET_RELATIVE_ERROR = 1e-4
RADIUS, BETA, EXP_TIMES = 5, 10, 8
IMAGE_SIZE = (375, 500)


# ----------------------------------------------------------------------------- inputs

def synthetic_inputs(height: int, width: int, channels: int, seed: int = 0):
    """Boundary map (h, w) in [0, 1] and CAMs (C, h, w), float32 torch tensors."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    n_cells = max(4, height * width // 400)
    centres = rng.random((n_cells, 2)) * (height, width)
    ys, xs = np.mgrid[:height, :width]
    cell = np.argmin((ys[..., None] - centres[:, 0]) ** 2 + (xs[..., None] - centres[:, 1]) ** 2, axis=-1)
    border = np.zeros((height, width), np.float32)
    border[:, 1:] += cell[:, 1:] != cell[:, :-1]
    border[1:, :] += cell[1:, :] != cell[:-1, :]
    border = F.avg_pool2d(torch.from_numpy(np.minimum(border, 1))[None, None], 3, 1, 1)[0, 0] * 2
    edge = (border.clamp(max=1) * 0.9 + 0.1 * torch.from_numpy(rng.random((height, width), np.float32)))

    peaks = rng.random((channels, 2)) * (height, width)
    sigmas = (0.1 + 0.2 * rng.random(channels)) * min(height, width)
    cams = np.exp(-((ys - peaks[:, 0, None, None]) ** 2 + (xs - peaks[:, 1, None, None]) ** 2)
                  / (2 * sigmas[:, None, None] ** 2)) * rng.random((channels, 1, 1))
    return edge.float(), torch.from_numpy(cams.astype(np.float32))


# ----------------------------------------------------------------------------- the dense baseline

def dense_random_walk(x, edge, radius: int = RADIUS, beta: float = BETA, exp_times: int = EXP_TIMES):
    """The reference's way: (x * (1 - edge)) @ T^(2^exp_times) with T an explicit (N, N) matrix.

    x (C, h, w), edge (h, w) -> (C, 1, h, w), in x's dtype.
    """
    import torch
    import torch.nn.functional as F

    from misc.indexing import PathIndex, edge_to_affinity

    height, width = edge.shape
    n_pixels = height * width
    padded_w = width + 2 * radius
    # pairs on the map padded with boundary 1 (left, right, bottom): same pairs and paths as the reference
    index = PathIndex(radius=radius, default_size=(height + radius, padded_w))
    padded = F.pad(edge[None, None], (radius, radius, 0, radius), value=1.0)[0]
    aff = edge_to_affinity(padded, index.path_indices)[0].reshape(-1)          # (P * sources,)
    src = np.broadcast_to(index.src_indices[None], index.dst_indices.shape).reshape(-1)
    dst = index.dst_indices.reshape(-1)
    # padded flat index -> index on the (h, w) map, or -1 in the padding
    ys, xs = np.divmod(np.arange((height + radius) * padded_w), padded_w)
    to_map = np.where((ys < height) & (xs >= radius) & (xs < width + radius), ys * width + xs - radius, -1)
    src, dst = to_map[src], to_map[dst]
    keep = torch.from_numpy((src >= 0) & (dst >= 0))
    src, dst = torch.from_numpy(src)[keep], torch.from_numpy(dst)[keep]

    trans = torch.eye(n_pixels, dtype=x.dtype)                                  # self-affinity 1
    trans[src, dst] = aff[keep].to(x.dtype)
    trans[dst, src] = aff[keep].to(x.dtype)
    trans.pow_(beta)
    trans /= trans.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        trans = trans @ trans
    walked = (x.reshape(-1, height, width) * (1 - edge.to(x.dtype))).reshape(-1, n_pixels) @ trans
    return walked.view(-1, 1, height, width)


# ----------------------------------------------------------------------------- one measurement per process

def memory_kb(field: str) -> int:
    """VmRSS (resident now) or VmHWM (resident peak) of this process, in kB."""
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def worker(args: argparse.Namespace) -> None:
    """Runs one method on one size; prints a JSON line and saves the output to args.output."""
    import torch

    from misc.indexing import propagate_to_edge
    from step.make_sem_seg_labels import sem_seg_from_edge

    if args.threads:
        torch.set_num_threads(args.threads)

    def run(edge, cams, image_size):
        if args.worker == 'sparse':
            return propagate_to_edge(cams, edge, radius=RADIUS, beta=BETA, exp_times=EXP_TIMES)
        if args.worker == 'dense':
            return dense_random_walk(cams, edge)
        keys = np.arange(len(cams)) * 3 % 20                    # the whole per-image step core
        return torch.from_numpy(sem_seg_from_edge(cams, edge, keys, image_size, beta=BETA, exp_times=EXP_TIMES))

    run(*synthetic_inputs(16, 16, args.channels), (64, 64))      # warm-up: library code and pools now resident
    edge, cams = synthetic_inputs(*args.size, args.channels)
    before = memory_kb('VmRSS')
    times, out = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = run(edge, cams, IMAGE_SIZE)
        times.append(time.perf_counter() - start)
    peak = memory_kb('VmHWM')
    np.save(args.output, out.numpy())
    print(json.dumps({'time_s': min(times), 'peak_mb': max(peak - before, 0) / 1024,
                      'threads': torch.get_num_threads()}))


def measure(method: str, size: tuple[int, int], args: argparse.Namespace, repeats: int, output: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), '--worker', method, '--size', *map(str, size),
               '--channels', str(args.channels), '--repeats', str(repeats), '--output', str(output),
               '--threads', str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'{method} {size} failed:\n{done.stderr}')
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help=f'only sizes up to {QUICK_MAX_PIXELS} pixels')
    parser.add_argument('--full', action='store_true', help='run the dense baseline at 128x128 too')
    parser.add_argument('--channels', type=int, default=21)
    parser.add_argument('--repeats', type=int, default=3, help='runs of the sparse walk (best is kept)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads in the workers (0: default)')
    parser.add_argument('--worker', choices=('sparse', 'dense', 'sem_seg'), help=argparse.SUPPRESS)
    parser.add_argument('--size', type=int, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument('--output', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0

    sizes = [s for s in SIZES if not args.quick or s[0] * s[1] <= QUICK_MAX_PIXELS]
    print(f'random walk: radius {RADIUS}, beta {BETA}, 2^{EXP_TIMES} steps, {args.channels} channels, '
          f'CPU, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores')
    print(f'{"size":>9s} {"N":>6s} | {"sparse s":>9s} {"dense s":>9s} {"ratio":>7s} | {"max rel diff":>12s} | '
          f'{"sparse MB":>9s} {"MB/kpx":>6s} {"dense MB":>9s} {"N^2 mat MB":>10s}')
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            n_pixels = size[0] * size[1]
            sparse = measure('sparse', size, args, args.repeats, Path(tmp, 'sparse.npy'))
            row = {'sparse': sparse, 'n': n_pixels}
            dense_text = f'{"-":>9s} {"-":>7s} | {"-":>12s}'
            dense_mb = '-'
            if n_pixels <= DENSE_MAX_PIXELS or args.full:
                dense = measure('dense', size, args, 1, Path(tmp, 'dense.npy'))
                ours, ref = np.load(Path(tmp, 'sparse.npy')), np.load(Path(tmp, 'dense.npy'))
                row.update(dense=dense, ratio=dense['time_s'] / sparse['time_s'],
                           error=float(np.abs(ours - ref).max() / np.abs(ref).max()))
                dense_text = f'{dense["time_s"]:9.2f} {row["ratio"]:6.0f}x | {row["error"]:12.2e}'
                dense_mb = f'{dense["peak_mb"]:9.0f}'
            rows[size] = row
            print(f'{size[0]:>4d}x{size[1]:<4d} {n_pixels:6d} | {sparse["time_s"]:9.3f} {dense_text} | '
                  f'{sparse["peak_mb"]:9.1f} {sparse["peak_mb"] / n_pixels * 1e3:6.2f} {dense_mb:>9s} '
                  f'{n_pixels ** 2 * 4 / 2 ** 20:10.0f}', flush=True)
        if not args.quick:
            step = measure('sem_seg', (94, 125), argparse.Namespace(**{**vars(args), 'channels': 3}),
                           args.repeats, Path(tmp, 'labels.npy'))
            print(f'sem_seg_from_edge, {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} image, cams (3, 94, 125): '
                  f'{step["time_s"]:.3f} s per image')
    print(f'torch threads per worker: {rows[sizes[0]]["sparse"]["threads"]}; '
          f'"N^2 mat MB" is one float32 N x N matrix; MB/kpx is the sparse peak per 1000 pixels')

    checks = []
    voc = rows.get((94, 125))
    if voc and 'ratio' in voc:
        checks.append((f'>= {TARGET_SPEEDUP:.0f}x faster than dense at 94x125', voc['ratio'] >= TARGET_SPEEDUP,
                       f'{voc["ratio"]:.0f}x'))
    errors = [row['error'] for row in rows.values() if 'error' in row]
    checks.append((f'max relative difference < {TARGET_RELATIVE_ERROR:g}', max(errors) < TARGET_RELATIVE_ERROR,
                   f'{max(errors):.2e}'))
    # linear memory: the sparse peak per pixel does not grow with N (a dense walk's grows N-fold)
    per_pixel = [row['sparse']['peak_mb'] / row['n'] for row in rows.values() if row['n'] >= 64 * 64]
    if len(per_pixel) > 1:
        checks.append(('sparse memory linear in N (peak per pixel at the largest size <= 1.5x that at 64x64)',
                       per_pixel[-1] <= 1.5 * per_pixel[0],
                       ', '.join(f'{v * 1e3:.2f}' for v in per_pixel) + ' MB per 1000 pixels'))
    for name, met, detail in checks:
        print(f'{"MET    " if met else "NOT MET"} {name}: {detail}')
    return 0 if all(met for _, met, _ in checks) else 1


if __name__ == '__main__':
    sys.exit(main())
