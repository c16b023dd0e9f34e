"""Does CDA help on the synthetic, context-biased data, and is it context decoupling? Paired, over seeds.

Each seed generates its own dataset and trains one baseline (`--method irn|affinitynet|seam`); the
CDA arms then start from that same baseline (its pseudo masks, its CAM network's training recipe), so
every comparison is a paired difference on the same data. Every arm, `cda` included, is its own
`--cda_only` run on a copy of the baseline's work dir, so its CDA networks start from the same random
state in every arm (a fresh process's, from the seed) and two arms differ only in what they change.
(Before 2026-12-01 the `cda` arm ran in the baseline's process and its networks started from the state
the baseline pass left: IRNet's table in docs/demo.md was measured so.)

  cda            CDA with the bank cut from the baseline's pseudo masks (the method as published)
  cda_oracle     CDA with the bank cut from the ground-truth masks of the train list (the bank
                 quality's upper bound: `--cda_bank_source <dataset>/SegmentationClass`)
  paste_usual    the published bank, objects pasted only into images of their class's usual scene
  paste_foreign  the same, only into images of a foreign scene (context decoupling predicts
                 foreign > usual; plain paste augmentation predicts no difference)
  cda_full       CDA with `--cda_schedule full`: the poly decay over the steps the CDA pass takes,
                 not the reference's half-length quirk (default arm for affinitynet and seam)
  baseline_long  no CDA: the baseline pass alone with twice the CAM epochs, as many CAM steps as
                 `cda_full` takes (a CDA step holds B/2 originals); `cda_full - baseline_long` then
                 compares CDA with training as long (default arm for affinitynet and seam)
  pasted_cls_only  SEAM only: CDA with the pasted images through the full-size branch and the
                 classification loss only, the originals through both branches and every loss
                 (`--no-cda_seam_equivariance`); `pasted_cls_only - cda` is the equivariance branch's
                 share of the effect (default arm for seam)

`--arms` picks among them ('cda' always runs). IRNet's default is the
first four, the arms of the README's table. `--resume` keeps the runs that <out>/results.json records
(same settings) and runs only the missing ones, e.g. an arm added to a finished table.

Figures of every arm (from each run's metrics/summary.json): CAM mIoU on the train list and on the
context-shift split (every object outside its usual scene), CAM leakage onto ground-truth background
(train list: pairs in the class's usual scene and in a foreign one; shift split), pseudo-mask mIoU on
the train list. Printed and written (<out>/results.md, results.json, after every finished seed):
the arms' means, and the paired differences arm - baseline and foreign - usual with mean, standard
deviation and 95% Student-t interval over the seeds.

Sizing. The full run is the demo profile itself (240 train / 50 shift images of 128 px, 8 CAM
epochs of batch 12, 3 IRN epochs of crop 96), the run a user sees, and 8 seeds. IRNet's table in
docs/demo.md was measured with the profile before (300 / 100 images, CAM batch 16, 4 IRN epochs of
crop 128; the flags below repeat it). With paired differences the interval's half-width is
t(n-1) * sd / sqrt(n), 0.84 sd at 8 seeds against 1.24 sd at 5, so a 2-point difference is resolved
when the paired spread stays under about 2.4 points; results.md prints the half-width each comparison
reached, so the reader sees whether it did. The instance steps are skipped (they do not change the
figures compared here). --quick (200 / 50 / 50 images; CAM 6 epochs and IRN 2 for irn, CAM 6 and
AffinityNet 1 for affinitynet, CAM 4 and AffinityNet 2 for seam) checks the script, and is the CPU
fallback for the ResNet-38 tables.

    python benchmarks/demo_seeds.py                          # 8 seeds, demo size (CPU: hours)
    # the README's table (one H100 machine: 8 minutes), with the profile it was measured with
    python benchmarks/demo_seeds.py --jobs 8 --device cuda --tune_seeds 100 101 102 103 104 105 106 107 \
        --n_train 300 --n_shift 100 --cam_batch_size 16 --irn_crop_size 128 --irn_num_epoches 4
    python benchmarks/demo_seeds.py --seeds 0 1 --quick      # the plumbing, smaller data
    python benchmarks/demo_seeds.py --method affinitynet --seeds 0 1 2 3 4 --quick --out runs/seeds_aff
Any argument this script does not know is passed on to run_sample.py (e.g. --device cuda, --amp).

Tuning (`--tune_seeds`, seeds disjoint from the table's): before the table, one baseline per tuning
seed picks the thresholds the table then uses, each by its own figure's mean over the tuning seeds:
the CAM evaluation threshold by CAM mIoU, and the walk (2^exp_times steps, background threshold) by
pseudo-mask mIoU. Neither looks at the other, nor at the table's seeds (<out>/tuning.md, tuning.json).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from misc.metrics import paired_difference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALL_ARMS = ('cda', 'cda_oracle', 'paste_usual', 'paste_foreign', 'cda_full', 'baseline_long', 'pasted_cls_only')
BASELINE_ARMS = ('baseline', 'baseline_long')    # runs without a CDA pass: their figures are the baseline's
METHOD_ONLY_ARMS = {'pasted_cls_only': 'seam'}   # arms that change one method's own training
DEFAULT_ARMS = {  # IRNet's table (README) was measured before cda_full existed
    'irn': ('cda', 'cda_oracle', 'paste_usual', 'paste_foreign'),
    'affinitynet': tuple(a for a in ALL_ARMS if METHOD_ONLY_ARMS.get(a, 'affinitynet') == 'affinitynet'),
    'seam': ALL_ARMS,
}
FIGURES = (  # (summary key, column title, higher is better)
    ('cam_miou', 'CAM mIoU train', True),
    ('cam_miou_shift', 'CAM mIoU shift', True),
    ('leakage_usual', 'leakage usual scene', False),
    ('leakage_foreign', 'leakage foreign scene', False),
    ('leakage_shift', 'leakage shift', False),
    ('sem_seg_miou', 'pseudo-mask mIoU', True),
    ('seg_miou_val', 'seg. network val mIoU', True),           # held out: the val split, never trained on
    ('seg_miou_val_crf', 'seg. network val mIoU + CRF', True),
)
NO_INSTANCES = ('--no-make_ins_seg_pass', '--no-eval_ins_seg_pass', '--no-cda_make_ins_seg_pass',
                '--no-cda_eval_ins_seg_pass')
QUICK_DATA = ('--n_train', '200', '--n_val', '50', '--n_shift', '50')
QUICK = {  # fewer epochs of each method's own training steps (its demo profile has the rest)
    'irn': (*QUICK_DATA, '--cam_num_epoches', '6', '--irn_num_epoches', '2'),
    'affinitynet': (*QUICK_DATA, '--cam_num_epoches', '6', '--aff_num_epoches', '1'),
    'seam': (*QUICK_DATA, '--cam_num_epoches', '4', '--aff_num_epoches', '2'),
}


def arm_figures(arm: str, summary: dict) -> dict:
    """The figures of `arm` in its run's summary: the baseline pass's for BASELINE_ARMS, else the CDA pass's."""
    return summary['baseline' if arm in BASELINE_ARMS else 'cda']


def run_sample(work_dir: Path, args: list, threads: int, log_name: Optional[str] = None) -> dict:
    """One run_sample.py process; its metrics/summary.json with the wall time added."""
    command = [sys.executable, str(ROOT / 'run_sample.py'), '--work_dir', str(work_dir), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    (work_dir.parent / f'{log_name or work_dir.name}.log').write_text(result.stdout + result.stderr)
    if result.returncode:
        raise RuntimeError(f'failed ({result.returncode}): {" ".join(command)}\n{result.stderr[-2000:]}')
    summary = json.loads((work_dir / 'metrics' / 'summary.json').read_text())
    summary['wall_seconds'] = time.perf_counter() - start
    return summary


def cam_epochs(method: str, args: list) -> int:
    """The CAM epochs a run with `args` trains: the last --cam_num_epoches given, else its profile's value."""
    def last(flag: str) -> Optional[str]:
        given = [args[i + 1] for i in range(len(args) - 1) if args[i] == flag]
        return given[-1] if given else None
    if last('--cam_num_epoches') is not None:
        return int(last('--cam_num_epoches'))
    from misc.config import profile_values
    from step.registry import catalog
    return int(profile_values(catalog().methods[method], last('--profile') or 'demo')['cam_num_epoches'])


def arm_args(arm: str, arm_dir: Path, epochs: int = 0) -> list:
    """run_sample.py flags of an arm: a CDA arm's run with --cda_only on a copy of the baseline's work dir;
    baseline_long's run of the baseline pass alone (`epochs`: the table's CAM epochs, doubled there)."""
    if arm == 'cda':
        return []
    if arm == 'baseline_long':
        return ['--cam_num_epoches', 2 * epochs]
    if arm == 'cda_oracle':
        return ['--cda_bank_source', oracle_bank_source(arm_dir)]
    if arm == 'cda_full':
        return ['--cda_schedule', 'full']
    if arm == 'pasted_cls_only':
        return ['--no-cda_seam_equivariance']
    return ['--cda_paste_context', arm.removeprefix('paste_')]


def oracle_bank_source(work_dir: Path) -> Path:
    """The ground-truth class masks of the run's generated dataset: the oracle bank's source."""
    return work_dir / 'synthetic_voc' / 'SegmentationClass'


def copy_baseline(base_dir: Path, arm_dir: Path) -> None:
    """The baseline's work dir without its CDA pass, for an arm to add its own."""
    if arm_dir.exists():
        shutil.rmtree(arm_dir)
    skip = {'cda', 'object_bank', 'report.md', 'contact_sheet.png'}
    shutil.copytree(base_dir, arm_dir, ignore=lambda d, names: [n for n in names if Path(d) == base_dir and n in skip])


def sweep_of(metrics_file: Path) -> dict:
    """{threshold: mIoU} of an evaluation's --sweep (rounded thresholds as keys)."""
    table = json.loads(metrics_file.read_text())['sweep']
    return {round(row['threshold'], 4): row['miou'] for row in table}


def choose(curves: list) -> tuple:
    """The key whose mean over the curves ({key: mIoU} each, one per tuning seed) is highest, and that mean."""
    keys = set.intersection(*(set(curve) for curve in curves))
    means = {key: float(np.mean([curve[key] for curve in curves])) for key in keys}
    best = max(sorted(means), key=lambda key: means[key])
    return best, means[best]


def tune(seeds: list, common: list, thresholds: list, exp_times: list, out: Path, threads: int,
         run_all) -> tuple:
    """Baselines on the tuning seeds; the CAM threshold and walk settings the table will use (flags) and a
    summary written to <out>/tuning.md and tuning.json."""
    sweep = ['--sweep', *thresholds]
    cam_curves, walk_curves = {}, {}

    def baseline(seed: int) -> None:
        work_dir = out / 'tuning' / f'seed{seed}'
        if work_dir.exists():
            shutil.rmtree(work_dir)
        run_sample(work_dir, ['--no-cda', '--seed', seed, *common, *sweep], threads)
        cam_curves[seed] = sweep_of(work_dir / 'metrics' / 'eval_cam.json')
        walk_curves[seed] = {}
        for steps in exp_times:             # the walk only: same IRN, same CAMs
            run_sample(work_dir, ['--no-cda', '--seed', seed, *common, *sweep, '--exp_times', steps,
                                  '--steps', 'make_sem_seg,eval_sem_seg'], threads, f'seed{seed}_exp{steps}')
            for threshold, miou in sweep_of(work_dir / 'metrics' / 'eval_sem_seg.json').items():
                walk_curves[seed][(steps, threshold)] = miou
        print(f'tuning seed {seed}: best CAM {100 * max(cam_curves[seed].values()):.1f}, best masks '
              f'{100 * max(walk_curves[seed].values()):.1f}', flush=True)

    run_all([((seed,), lambda _push, seed=seed: baseline(seed)) for seed in seeds])
    done = [s for s in seeds if s in cam_curves]
    if not done:
        raise RuntimeError('no tuning run finished; see the logs in ' + str(out / 'tuning'))
    cam_threshold, cam_mean = choose([cam_curves[s] for s in done])
    (steps, walk_threshold), walk_mean = choose([walk_curves[s] for s in done])
    flags = ['--cam_eval_thres', cam_threshold, '--exp_times', steps, '--sem_seg_bg_thres', walk_threshold]
    lines = [f'Tuning on seeds {", ".join(map(str, done))} (baselines): each setting by its own mean mIoU (%).', '',
             f'CAM threshold {cam_threshold} (mean CAM mIoU {100 * cam_mean:.1f}); walk 2^{steps} steps, '
             f'background {walk_threshold} (mean pseudo-mask mIoU {100 * walk_mean:.1f}).', '',
             '| threshold | CAM | ' + ' | '.join(f'masks 2^{e}' for e in exp_times) + ' |',
             '|---|---|' + '---|' * len(exp_times)]
    for threshold in sorted(cam_curves[done[0]]):
        cells = [f'{100 * np.mean([cam_curves[s][threshold] for s in done]):.1f}']
        cells += [f'{100 * np.mean([walk_curves[s][(e, threshold)] for s in done]):.1f}'
                  if all((e, threshold) in walk_curves[s] for s in done) else '-' for e in exp_times]
        lines.append(f'| {threshold} | ' + ' | '.join(cells) + ' |')
    lines += ['', f'table flags: {" ".join(map(str, flags))}']
    out.mkdir(parents=True, exist_ok=True)
    (out / 'tuning.md').write_text('\n'.join(lines) + '\n')
    (out / 'tuning.json').write_text(json.dumps(
        {'seeds': done, 'flags': [str(f) for f in flags],
         'cam': {str(s): cam_curves[s] for s in done},
         'walk': {str(s): {f'{e}:{t}': v for (e, t), v in walk_curves[s].items()} for s in done}}, indent=1))
    print('\n'.join(lines), flush=True)
    return flags


def _pct(value: Optional[float]) -> str:
    return '-' if value is None else f'{100 * value:.1f}'


class Results:
    """Per seed, the baseline's and every arm's figures; rewrites results.json/.md after each seed."""

    def __init__(self, out: Path, seeds: list, header: str, arms: tuple = DEFAULT_ARMS['irn']):
        self.out, self.seeds, self.header, self.arms = out, seeds, header, tuple(arms)
        self.figures: dict[int, dict[str, dict]] = {seed: {} for seed in seeds}
        self.seconds: dict[int, dict[str, float]] = {seed: {} for seed in seeds}
        self.lock = threading.Lock()

    def add(self, seed: int, arm: str, summary: dict) -> None:
        with self.lock:
            self.figures[seed][arm] = arm_figures(arm, summary)
            self.seconds[seed][arm] = summary['wall_seconds']
            if all(a in self.figures[seed] for a in ('baseline', *self.arms)):
                self.write()

    def resume(self) -> None:
        """Take the finished runs that results.json in `out` records, for seeds and arms of this table; the
        file must come from the same settings (header)."""
        path = self.out / 'results.json'
        if not path.is_file():
            return
        previous = json.loads(path.read_text())
        if previous.get('header') != self.header:
            raise SystemExit(f'{path} was written with other settings ({previous.get("header")}); '
                             'give another --out, or drop --resume')
        for seed in self.seeds:
            for arm, figures in previous['figures'].get(str(seed), {}).items():
                if arm in ('baseline', *self.arms):
                    self.figures[seed][arm] = figures
                    self.seconds[seed][arm] = previous['wall_seconds'].get(str(seed), {}).get(arm, 0.0)

    def complete_seeds(self) -> list:
        return [s for s in self.seeds if all(a in self.figures[s] for a in ('baseline', *self.arms))]

    def values(self, arm: str, key: str) -> list:
        return [self.figures[s][arm].get(key) for s in self.complete_seeds()]

    def comparisons(self) -> dict:
        pairs = [(f'{arm} - baseline', arm, 'baseline') for arm in self.arms]
        if {'paste_foreign', 'paste_usual'} <= set(self.arms):
            pairs.append(('paste_foreign - paste_usual', 'paste_foreign', 'paste_usual'))
        if 'cda_full' in self.arms:       # the schedule quirk's own effect
            pairs.append(('cda_full - cda', 'cda_full', 'cda'))
        if {'cda_full', 'baseline_long'} <= set(self.arms):      # CDA against training as long without it
            pairs.append(('cda_full - baseline_long', 'cda_full', 'baseline_long'))
        if 'pasted_cls_only' in self.arms:      # the pasted images' share through SEAM's equivariance branch
            pairs.append(('pasted_cls_only - cda', 'pasted_cls_only', 'cda'))
        return {name: {key: paired_difference(self.values(a, key), self.values(b, key)) for key, _, _ in FIGURES}
                for name, a, b in pairs}

    def table(self) -> str:
        seeds = self.complete_seeds()
        lines = [self.header, '', f'{len(seeds)} seeds ({", ".join(map(str, seeds))}); figures in %, '
                 'leakage = share of a class\'s CAM mass on ground-truth background (lower is better)', '',
                 '| arm | ' + ' | '.join(title for _, title, _ in FIGURES) + ' |',
                 '|---|' + '---|' * len(FIGURES)]
        for arm in ('baseline', *self.arms):
            cells = []
            for key, _, _ in FIGURES:
                known = [100 * v for v in self.values(arm, key) if v is not None]
                spread = f' ± {np.std(known, ddof=1):.1f}' if len(known) > 1 else ''
                cells.append(f'{np.mean(known):.1f}{spread}' if known else '-')
            lines.append(f'| {arm} | ' + ' | '.join(cells) + ' |')
        lines += ['', 'Paired differences: mean ± sd [95% interval] (percentage points)', '',
                  '| comparison | ' + ' | '.join(title for _, title, _ in FIGURES) + ' |',
                  '|---|' + '---|' * len(FIGURES)]
        for name, row in self.comparisons().items():
            cells = []
            for key, _, _ in FIGURES:
                d = row[key]
                if d is None:
                    cells.append('-')
                elif d['n'] == 1:
                    cells.append(f'{100 * d["mean"]:+.1f} (1 seed)')
                else:
                    cells.append(f'{100 * d["mean"]:+.1f} ± {100 * d["sd"]:.1f} '
                                 f'[{100 * d["low"]:+.1f}, {100 * d["high"]:+.1f}]')
            lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
        lines += ['', 'Per seed: does each pass\'s walk (pseudo masks) beat the CAMs it starts from?', '',
                  '| seed | ' + ' | '.join(f'{arm} CAM | {arm} masks' for arm in ('baseline', *self.arms)) + ' |',
                  '|---|' + '---|---|' * (1 + len(self.arms))]
        beaten = {arm: 0 for arm in ('baseline', *self.arms)}
        for seed in seeds:
            cells = []
            for arm in ('baseline', *self.arms):
                cam, masks = (self.figures[seed][arm].get(k) for k in ('cam_miou', 'sem_seg_miou'))
                cells.append(f'{_pct(cam)} | {_pct(masks)}')
                beaten[arm] += cam is not None and masks is not None and masks > cam
            lines.append(f'| {seed} | ' + ' | '.join(cells) + ' |')
        lines += ['', 'pseudo masks above their CAMs: ' + ', '.join(f'{arm} {n} of {len(seeds)} seeds'
                                                                    for arm, n in beaten.items())]
        walls = [s for seed in seeds for s in self.seconds[seed].values()]
        if walls:
            lines += ['', f'run wall time: {np.mean(walls):.0f} s on average over {len(walls)} runs']
        return '\n'.join(lines)

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        payload = {'header': self.header, 'seeds': self.complete_seeds(), 'figures': self.figures,
                   'wall_seconds': self.seconds, 'paired_differences': self.comparisons()}
        (self.out / 'results.json').write_text(json.dumps(payload, indent=1, default=float))
        (self.out / 'results.md').write_text(self.table() + '\n')


def run_jobs(initial: list, workers: int, failures: list) -> None:
    """Runs (priority, job) pairs on `workers` threads, lowest priority first. Each job is called with
    `push(priority, job)`, with which it may queue more; returns when every job, queued ones included,
    has finished. A failed job is reported and the others go on."""
    jobs: queue.PriorityQueue = queue.PriorityQueue()
    order = itertools.count()

    def push(priority: tuple, job) -> None:
        jobs.put((priority, next(order), job))

    def worker() -> None:
        while True:
            _, _, job = jobs.get()
            try:
                if job is None:
                    return
                job(push)
            except Exception as error:
                failures.append(str(error))
                print(error, file=sys.stderr, flush=True)
            finally:
                jobs.task_done()

    for priority, job in initial:
        push(priority, job)
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    jobs.join()
    for _ in threads:
        push((float('inf'),), None)
    for thread in threads:
        thread.join()


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seeds', type=int, nargs='+', default=list(range(8)))
    parser.add_argument('--context_bias', type=float, default=0.85)
    parser.add_argument('--method', choices=tuple(DEFAULT_ARMS), default='irn')
    parser.add_argument('--arms', nargs='+', choices=ALL_ARMS,
                        help="arms beside the baseline ('cda' always runs); "
                             "default: IRNet's four, and cda_full and baseline_long too for affinitynet and seam")
    parser.add_argument('--quick', action='store_true', help='200 train / 50 val / 50 shift images, fewer epochs')
    parser.add_argument('--jobs', type=int, default=1, help='runs side by side (each gets cores / jobs threads)')
    parser.add_argument('--out', type=Path, default=ROOT / 'runs' / 'demo_seeds')
    parser.add_argument('--resume', action='store_true',
                        help="keep the runs <out>/results.json records (same settings); run only the others")
    parser.add_argument('--tune_seeds', type=int, nargs='*', default=[],
                        help='first choose the CAM threshold and the walk on baselines of these seeds (not '
                             'among --seeds); the table then runs with them')
    parser.add_argument('--tune_thresholds', type=float, nargs='+',
                        default=[0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5])
    parser.add_argument('--tune_exp_times', type=int, nargs='+', default=[3, 4, 5])
    args, passed_on = parser.parse_known_args(argv)
    if set(args.tune_seeds) & set(args.seeds):
        parser.error('--tune_seeds must not overlap --seeds: the table would be scored on the seeds it was tuned on')
    arms = ('cda', *[a for a in ALL_ARMS if a != 'cda' and a in (args.arms or DEFAULT_ARMS[args.method])])
    for arm in arms:
        if METHOD_ONLY_ARMS.get(arm, args.method) != args.method:
            parser.error(f'arm {arm} is for --method {METHOD_ONLY_ARMS[arm]} only')
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    common = ['--method', args.method, '--profile', 'demo', '--context_bias', args.context_bias,
              '--num_workers', min(threads, 4), *NO_INSTANCES, *(QUICK[args.method] if args.quick else ()),
              *passed_on]
    failures: list = []
    if args.tune_seeds:
        common += tune(args.tune_seeds, common, args.tune_thresholds, args.tune_exp_times, args.out, threads,
                       lambda jobs: run_jobs(jobs, args.jobs, failures))
    header = (f'benchmarks/demo_seeds.py: {args.method}, context bias {args.context_bias}, '
              f'{"quick" if args.quick else "demo"} size, run_sample.py {" ".join(map(str, common))}')
    results = Results(args.out, args.seeds, header, arms)
    if args.resume:
        results.resume()
    epochs = cam_epochs(args.method, [str(a) for a in common])
    print(header, flush=True)

    # Earlier seeds first: a run cut short still leaves whole seeds behind. A main run queues its seed's
    # arms before it finishes, so every run, arms included, is done when run_jobs returns.
    def main_run(seed: int, push) -> None:
        base_dir = args.out / f'seed{seed}'
        if 'baseline' not in results.figures[seed] or not base_dir.is_dir():
            if base_dir.exists():
                shutil.rmtree(base_dir)
            summary = run_sample(base_dir, ['--no-cda', '--seed', seed, *common], threads)
            results.add(seed, 'baseline', summary)
            print(f'seed {seed}: baseline CAM {100 * summary["baseline"]["cam_miou"]:.1f}, masks '
                  f'{100 * summary["baseline"]["sem_seg_miou"]:.1f} ({summary["wall_seconds"]:.0f} s)', flush=True)
        for rank, arm in enumerate(arms):
            if arm not in results.figures[seed]:
                push((seed, 1 + rank), lambda _push, arm=arm: arm_run(seed, arm))

    def arm_run(seed: int, arm: str) -> None:
        base_dir, arm_dir = args.out / f'seed{seed}', args.out / f'seed{seed}_{arm}'
        flags = arm_args(arm, arm_dir, epochs)
        if arm in BASELINE_ARMS:
            if arm_dir.exists():
                shutil.rmtree(arm_dir)
            summary = run_sample(arm_dir, ['--no-cda', '--seed', seed, *common, *flags], threads)
        else:
            copy_baseline(base_dir, arm_dir)
            summary = run_sample(arm_dir, ['--cda_only', '--seed', seed, *common, *flags], threads)
        results.add(seed, arm, summary)
        print(f'seed {seed} {arm}: CAM {100 * arm_figures(arm, summary)["cam_miou"]:.1f} ({summary["wall_seconds"]:.0f} s)', flush=True)

    run_jobs([((seed, 0), lambda push, seed=seed: main_run(seed, push)) for seed in args.seeds], args.jobs,
             failures)
    results.write()
    print('\n' + results.table())
    print(f'\nwritten: {args.out / "results.md"}, {args.out / "results.json"}')
    if failures:
        print(f'{len(failures)} run(s) failed; see the .log files in {args.out}', file=sys.stderr)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
