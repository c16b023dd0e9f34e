"""Segment your own images with a trained segmentation network.

    python -m step.segment_images --seg_weights work_dir/cda/weights/seg.pt --images my_photos --out_dir my_masks

For every file in --images (sorted; hidden files left out): `<out_dir>/<name>.png`, the class map as an indexed
PNG with the VOC palette (0 background, 1..20 the VOC classes), and `<out_dir>/<name>_overlay.jpg`, the image
with the classes' colours blended in. A file that cannot be read as an image gets one line on stderr
(`skipped PATH: reason`) and the others go on. Exit status: 0 when every file was segmented, 1 when some were
skipped, 2 when the weights or folders are unusable.

--seg_weights takes this project's `weights/seg.pt` (the network and its sizes are read from it) or a
deeplab-pytorch MSC checkpoint (DeepLab-v2 ResNet-101; `--seg_network` for other networks); --crf adds the
dense CRF of make_seg.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from misc import imutils, torchutils
from misc.imutils import BadInputError
from net.deeplab import SEG_NETWORKS, build_seg_network, input_is_bgr_mean
from voc12.classes import VOC12
from voc12.seg_dataset import SegInferenceDataset


def read_seg_checkpoint(path: Path, network: Optional[str] = None) -> tuple[dict, dict]:
    """(tensor state dict, {'network', 'width', 'msc_scales', 'rates'}) of a trained network file; the sizes come from the
    config saved in this project's seg.pt, else from `network` (default deeplabv2) and its defaults."""
    from net.weights import read_state_dict
    state = read_state_dict(path, '--seg_weights')
    spec = {'network': network or 'deeplabv2', 'width': 64, 'msc_scales': (0.5, 0.75), 'rates': (6, 12, 18, 24)}
    try:
        raw = torch.load(path, map_location='cpu', weights_only=True)
        saved = json.loads(raw['config']) if isinstance(raw, dict) and isinstance(raw.get('config'), str) else None
    except Exception:
        saved = None
    if saved:
        spec = {'network': network or saved.get('seg_network', 'deeplabv2'), 'width': saved.get('seg_width', 64),
                'msc_scales': tuple(saved.get('seg_msc_scales', (0.5, 0.75))),
                'rates': tuple(saved.get('seg_aspp_rates', (6, 12, 18, 24)))}
    return state, spec


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image with the VOC colours of `labels` (H, W) blended in where a class is present."""
    colours = VOC12.colorize(labels).astype(np.float32)
    blend = np.where((labels > 0)[..., None], (1 - alpha) * rgb + alpha * colours, rgb)
    return blend.astype(np.uint8)


def segment_folder(model: torch.nn.Module, network: str, images: Path, out_dir: Path, device: torch.device,
                   crf: bool = False) -> tuple[list[str], list[tuple[str, str]]]:
    """Segment every file of `images` into `out_dir`; returns (names written, [(path, reason) skipped])."""
    from misc.seg_crf import deeplab_crf, softmax, upsample_logits
    from step.make_seg import labels_from_logits, predict_logits
    paths = sorted(p for p in Path(images).iterdir() if p.is_file() and not p.name.startswith('.'))
    dataset = SegInferenceDataset(paths, input_is_bgr_mean(network), names=[p.stem for p in paths])
    done, skipped = [], []
    for path, index in zip(paths, range(len(dataset))):
        item = dataset[index]
        if 'error' in item:
            reason = item['error'].split(': ', 1)[-1]
            print(f'skipped {path}: {reason}', file=sys.stderr)
            skipped.append((str(path), reason))
            continue
        logits = predict_logits(model, item['img'], device)
        if crf:
            probs = softmax(upsample_logits(logits.cpu().numpy(), item['rgb'].shape[:2]))
            labels = deeplab_crf(item['rgb'], probs)
        else:
            labels = labels_from_logits(logits, item['rgb'].shape[:2])
        imutils.save_label_png(out_dir / f'{item["name"]}.png', labels, VOC12.palette)
        imutils.save_rgb(out_dir / f'{item["name"]}_overlay.jpg', overlay(item['rgb'], labels))
        done.append(item['name'])
    return done, skipped


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m step.segment_images', description=__doc__.split('\n')[0])
    parser.add_argument('--seg_weights', type=Path, required=True, help='trained network: weights/seg.pt of a run, '
                        'or a deeplab-pytorch DeepLab-v2 MSC checkpoint')
    parser.add_argument('--images', type=Path, required=True, help='folder of images')
    parser.add_argument('--out_dir', type=Path, required=True, help='where the PNGs and overlays go')
    parser.add_argument('--seg_network', choices=SEG_NETWORKS, help='the network of --seg_weights when the file does '
                        'not say (default deeplabv2)')
    parser.add_argument('--crf', action='store_true', help='dense-CRF post-processing (deeplab-pytorch settings)')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    args = parser.parse_args(argv)
    try:
        if not args.images.is_dir():
            raise BadInputError(f'--images {args.images}: no such folder')
        state, spec = read_seg_checkpoint(args.seg_weights, args.seg_network)
        from step.make_seg import load_seg_state
        model = build_seg_network(spec['network'], VOC12.num_labels, 'none', spec['msc_scales'], spec['width'],
                                  load_weights=False, rates=spec['rates'])
        load_seg_state(model, state, f'--seg_weights {args.seg_weights}')
        device = torchutils.select_device(args.device)
        model = model.to(device).eval()
        args.out_dir.mkdir(parents=True, exist_ok=True)
        done, skipped = segment_folder(model, spec['network'], args.images, args.out_dir, device, args.crf)
    except BadInputError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'{len(done)} image(s) segmented into {args.out_dir}' + (f', {len(skipped)} skipped' if skipped else ''))
    return 1 if skipped else 0


if __name__ == '__main__':
    sys.exit(main())
