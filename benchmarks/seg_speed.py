"""train_seg / make_seg throughput: the project's loop against a plain fp32 loop of the same network, side by side.

    python benchmarks/seg_speed.py                  # paper size: DeepLab-v2 ResNet-101 MSC, crop 321, batch 10
    python benchmarks/seg_speed.py --quick          # seconds on a CPU: the demo network at small size

The project's loop is `step.train_seg.train_iterations` (AMP: bf16 autocast, fp16 with a gradient scaler where
bf16 is unsupported; channels_last; on CUDA only, as in the steps) and `step.make_seg.predict_logits`; the plain
loop is the textbook one: fp32, contiguous tensors, the same loss, optimiser and schedule. Both start from the
same weights and see the same random batches (in memory: the data loader is left out; it is the same code for
both). Printed: iterations (images) per second of each, their ratio, and the losses of both over the measured
iterations (AMP should stay within the seed-to-seed spread of fp32).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from misc.config import parse_config   # noqa: E402
from step.make_seg import predict_logits   # noqa: E402
from step.train_seg import build_model, make_optimizer, seg_loss, train_iterations   # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def batches(n: int, batch: int, crop: int, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        labels = torch.randint(0, 21, (batch, crop // 16, crop // 16), generator=gen)
        labels = labels.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :crop, :crop]   # blocky, learnable
        img = torch.randn(batch, 3, crop, crop, generator=gen) * 40 + labels[:, None].float() * 3
        out.append({'img': img, 'label': labels})
    return out


def plain_loop(model, data, optimizer, scheduler, device) -> list[float]:
    model.train()
    losses = []
    for batch in data:
        optimizer.zero_grad(set_to_none=True)
        loss = seg_loss(model(batch['img'].to(device)), batch['label'].to(device))
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return losses


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='demo network, crop 64, batch 4, 3 iterations (CPU)')
    parser.add_argument('--network', default=None)
    parser.add_argument('--crop', type=int, default=None)
    parser.add_argument('--batch', type=int, default=None)
    parser.add_argument('--iterations', type=int, default=None)
    parser.add_argument('--warmup', type=int, default=None)
    parser.add_argument('--infer_size', type=int, nargs=2, default=None, help='H W of the inference images')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    args = parser.parse_args()
    quick = args.quick
    network = args.network or ('deeplabv2_resnet18' if quick else 'deeplabv2')
    crop, batch = args.crop or (64 if quick else 321), args.batch or (4 if quick else 10)
    iterations, warmup = args.iterations or (3 if quick else 30), args.warmup if args.warmup is not None else (1 if quick else 5)
    infer_size = tuple(args.infer_size or ((96, 128) if quick else (375, 500)))
    flags = ['--profile', 'smoke' if quick else 'paper', '--voc12_root', '.', '--seg_network', network,
             '--seg_pretrained', 'none', '--seg_iterations', str(20000), '--seg_batch_size', str(batch),
             '--seg_crop_size', str(crop), '--device', args.device, '--amp', '--channels_last', '--num_workers', '0']
    if not quick:
        flags += ['--seg_msc_scales', '0.5', '0.75']
    cfg = parse_config(flags)
    device = torch.device('cuda' if args.device != 'cpu' and torch.cuda.is_available() else 'cpu')
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f'{network}, crop {crop}, batch {batch}, {iterations} timed iterations after {warmup}, on {name}')
    torch.manual_seed(0)
    reference = build_model(cfg, load_weights=False)
    data = batches(warmup + iterations, batch, crop, seed=1)

    # the project's loop
    project = copy.deepcopy(reference).to(device)
    if device.type == 'cuda':
        project = project.to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(project, cfg)
    train_iterations(project, iter(data[:warmup]), optimizer, scheduler, device, cfg, 0, warmup)
    history, ours = timed(lambda: train_iterations(project, iter(data[warmup:]), optimizer, scheduler, device, cfg,
                                                   warmup, warmup + iterations), device)
    # the plain fp32 loop
    plain = copy.deepcopy(reference).to(device)
    optimizer, scheduler = make_optimizer(plain, cfg)
    plain_loop(plain, data[:warmup], optimizer, scheduler, device)
    losses, theirs = timed(lambda: plain_loop(plain, data[warmup:], optimizer, scheduler, device), device)
    print(f'train_seg  project {iterations / ours:7.2f} it/s ({batch * iterations / ours:7.1f} img/s)   plain fp32 '
          f'{iterations / theirs:7.2f} it/s   ratio {theirs / ours:.2f}x')
    print(f'           loss at the last iteration: project {history[-1]["loss"]:.4f}, plain {losses[-1]:.4f}')

    # make_seg: whole images at their own size, batch 1
    images = [torch.randn(3, *infer_size) * 40 for _ in range(warmup + iterations)]
    project.eval()
    plain.eval()
    for img in images[:warmup]:
        predict_logits(project, img, device, amp=True, channels_last=True)
        predict_logits(plain, img, device)
    _, ours = timed(lambda: [predict_logits(project, img, device, amp=True, channels_last=True)
                             for img in images[warmup:]], device)
    _, theirs = timed(lambda: [predict_logits(plain, img, device) for img in images[warmup:]], device)
    print(f'make_seg   project {iterations / ours:7.2f} img/s   plain fp32 {iterations / theirs:7.2f} img/s   '
          f'ratio {theirs / ours:.2f}x  ({infer_size[0]}x{infer_size[1]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
