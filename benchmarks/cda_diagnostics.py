"""What the CDA pass of a finished run trained on: its object bank and its training pairs. No training.

For each work dir that holds a CDA pass (`object_bank/index.json`, `config.json`):

- the bank: its objects, the classes with none (never pasted), and against the ground truth of each
  object's source image: whether the object's class is in the image at all, the share of the object's
  pixels that are that class in truth (precision), and whether the image holds other classes too (a
  mask the single-class filter let through although the image is not single-class);
- the pairs of the CDA pass's first epoch, drawn as training draws them (the run's settings and seed):
  the share with a pasted class, and how much of the pasted object the crop keeps (mean share, and the
  share of pairs keeping less than 10%, 25% or 50% of it; `--cda_min_visible` drops the class from the
  label below its value).

With several work dirs (one per seed), the means over them follow. These are the bank-quality and
crop-survival candidates for why CDA helps or hurts a method (docs/demo.md, the ResNet-38 demos).

    python benchmarks/cda_diagnostics.py runs/seeds_aff/seed0_cda runs/seeds_aff/seed1_cda
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from misc import config as config_module  # noqa: E402
from misc.imutils import read_label_png  # noqa: E402

SURVIVAL_CUTS = (0.1, 0.25, 0.5)


def bank_figures(entries: list, source_dir: Path, truth_dir: Path, num_classes: int) -> dict:
    """Figures of the bank's objects (index.json entries) against the ground truth of their source images.
    Each object is the single foreground class of its source mask (make_object_bank's filter)."""
    per_class = {c: 0 for c in range(num_classes)}
    precisions, class_in_truth, other_classes = [], [], []
    for entry in entries:
        label = entry['class'] + 1
        per_class[entry['class']] += 1
        mask = read_label_png(source_dir / f'{entry["source"]}.png')
        truth = read_label_png(truth_dir / f'{entry["source"]}.png')
        ours = mask == label
        precisions.append(float(np.count_nonzero(ours & (truth == label))) / max(int(np.count_nonzero(ours)), 1))
        present = {int(v) for v in np.unique(truth) if 1 <= v <= num_classes}
        class_in_truth.append(label in present)
        other_classes.append(bool(present - {label}))
    return {'objects': len(entries), 'classes_without_objects': sum(1 for n in per_class.values() if n == 0),
            'per_class': per_class,
            'class_in_truth': float(np.mean(class_in_truth)) if entries else None,
            'pixel_precision': float(np.mean(precisions)) if entries else None,
            'source_not_single_class': float(np.mean(other_classes)) if entries else None}


def pair_figures(pasted_classes: list, visible: list) -> dict:
    """Figures of one epoch's pairs from their pasted class (-1: none) and the share of the object kept."""
    kept = [share for cls, share in zip(pasted_classes, visible) if cls >= 0]
    figures = {'pairs': len(pasted_classes), 'pasted': len(kept) / max(len(pasted_classes), 1),
               'mean_visible': float(np.mean(kept)) if kept else None}
    for cut in SURVIVAL_CUTS:
        figures[f'visible_below_{cut}'] = float(np.mean([share < cut for share in kept])) if kept else None
    return figures


def epoch_pairs(cfg) -> tuple[list, list]:
    """(pasted class, kept share) of every pair of the CDA pass's first epoch, as train_cam draws them."""
    from step import train_cam
    train_set, _, _ = train_cam.make_datasets(config_module.with_stage(cfg, 'cda'))
    train_set.set_epoch(0)
    classes, visible = [], []
    for index in range(len(train_set)):
        item = train_set[index]
        classes.append(int(item['pasted_class']))
        visible.append(float(item['pasted_visible']))
    return classes, visible


def diagnose(work_dir: Path) -> dict:
    cfg = config_module.from_dict(json.loads((work_dir / 'config.json').read_text()))
    cfg = dataclasses.replace(cfg, work_dir=work_dir)
    from step import common
    source = Path(cfg.cda_bank_source) if cfg.cda_bank_source is not None else cfg.sem_seg_dir
    entries = json.loads((cfg.object_bank_dir / 'index.json').read_text())
    figures = {'bank': bank_figures(entries, source, cfg.dataset_root / 'SegmentationClass',
                                    common.dataset(cfg).num_classes)}
    figures['pairs'] = pair_figures(*epoch_pairs(cfg))
    return figures


def _pct(value: Optional[float]) -> str:
    return '-' if value is None else f'{100 * value:.1f}'


ROWS = (  # (section, key, title, as a percentage)
    ('bank', 'objects', 'bank objects', False),
    ('bank', 'classes_without_objects', 'classes without objects', False),
    ('bank', 'class_in_truth', 'objects whose class is in the image (%)', True),
    ('bank', 'pixel_precision', 'object pixels of that class in truth (%)', True),
    ('bank', 'source_not_single_class', 'objects from images of several classes (%)', True),
    ('pairs', 'pasted', 'pairs with a pasted object (%)', True),
    ('pairs', 'mean_visible', 'share of the object inside the crop (%)', True),
    *(('pairs', f'visible_below_{cut}', f'pairs keeping under {int(100 * cut)}% of it (%)', True)
      for cut in SURVIVAL_CUTS),
)


def table(names: list, results: list) -> str:
    lines = ['| figure | ' + ' | '.join(names) + (' | mean |' if len(names) > 1 else ' |'),
             '|---|' + '---|' * (len(names) + (len(names) > 1))]
    for section, key, title, percent in ROWS:
        values = [result[section][key] for result in results]
        cells = [_pct(v) if percent else str(v) for v in values]
        if len(names) > 1:
            known = [v for v in values if v is not None]
            mean = float(np.mean(known)) if known else None
            cells.append(_pct(mean) if percent else ('-' if mean is None else f'{mean:.1f}'))
        lines.append(f'| {title} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('work_dirs', type=Path, nargs='+')
    parser.add_argument('--json', type=Path, help='also write the figures here')
    args = parser.parse_args(argv)
    missing = [d for d in args.work_dirs if not (d / 'object_bank' / 'index.json').is_file()
               or not (d / 'config.json').is_file()]
    if missing:
        print(f'{missing[0]}: no object_bank/index.json or config.json; give work dirs of runs with a CDA pass',
              file=sys.stderr)
        return 2
    results = [diagnose(d) for d in args.work_dirs]
    print(table([d.name for d in args.work_dirs], results))
    if args.json is not None:
        args.json.write_text(json.dumps({str(d): r for d, r in zip(args.work_dirs, results)}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
