"""Run the pipeline of a method (IRNet, AffinityNet, SEAM; + CDA): each step switchable from the command line.

    python run_sample.py                          # demo: synthetic VOC-format data, baseline + CDA, CPU
    python run_sample.py --voc12_root VOC2012     # the paper's baseline on PASCAL VOC 2012
    python run_sample.py --voc12_root VOC2012 --cda
    python run_sample.py --dataset coco14 --coco_root COCO2014 --cda   # MS COCO 2014 (docs/coco.md)
    torchrun --nproc_per_node 4 run_sample.py --voc12_root VOC2012 --cda
"""
from __future__ import annotations

import errno
import os
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from misc.config import Config, with_stage
from misc.imutils import BadInputError, atomic_path
from step.registry import module_for, parse_config, split_step

logger = logging.getLogger('run_sample')



def one_line(error: Exception) -> str:
    """The message of an input error, also when it was re-raised from a DataLoader worker (whose message
    then carries the worker's traceback, ending with the original line)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and 'Traceback' in str(error):
        return lines[-1].split('BadInputError: ', 1)[-1]
    return lines[0] if lines else type(error).__name__


def setup_logging(cfg: Config, main_process: bool) -> None:
    from misc import progress
    progress.configure(cfg.progress)
    handlers: list[logging.Handler] = []
    if main_process:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter('%(message)s'))
        handlers.append(console)
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        log_file = logging.FileHandler(cfg.work_dir / 'log.txt')
        log_file.setFormatter(logging.Formatter('%(asctime)s %(name)s %(levelname)s: %(message)s'))
        handlers.append(log_file)
    else:
        handlers.append(logging.NullHandler())
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)


def step_config(cfg: Config, step: str) -> tuple[Optional[str], Config]:
    """The module (None where the method has no such step) and the stage-specific config of a step
    name (cda_* steps run in the cda stage, fs_* in the fully_supervised one)."""
    slot, stage = split_step(step)
    return module_for(cfg.method, slot), with_stage(cfg, stage) if stage else cfg


def prepare_dataset(cfg: Config) -> None:
    from misc import torchutils
    from step import common
    from voc12 import dataloader
    if cfg.dataset == 'coco14':
        prepare_coco(cfg)
    elif cfg.voc12_root is None:
        if torchutils.is_main_process():
            from voc12.synthetic import generate
            logger.info('no --voc12_root: using a synthetic VOC-format dataset (%d train, %d val, %d context-shift, '
                        '%d px, context bias %.2f) in %s', cfg.synthetic_n_train, cfg.synthetic_n_val,
                        cfg.synthetic_n_shift, cfg.synthetic_size, cfg.context_bias, cfg.dataset_root)
            generate(cfg.dataset_root, n_train=cfg.synthetic_n_train, n_val=cfg.synthetic_n_val,
                     size=cfg.synthetic_size, context_bias=cfg.context_bias, seed=cfg.seed,
                     n_shift=cfg.synthetic_n_shift)
        torchutils.barrier()
    dataloader.check_voc_root(cfg.dataset_root)
    ids: set[str] = set()
    for ids_of in (common.train_ids, common.val_ids, common.infer_ids, common.eval_ids):
        ids.update(ids_of(cfg))
    ids.update(dataloader.shift_ids(cfg.dataset_root))
    dataloader.check_images(cfg.dataset_root, sorted(ids))


def prepare_coco(cfg: Config) -> None:
    """--dataset coco14: the synthetic COCO folder where no --coco_root is given, then the VOC-layout view
    of the COCO folder (coco14.dataset) under the work dir, made by the main process."""
    from misc import torchutils
    from coco14 import dataset as coco_dataset
    if torchutils.is_main_process():
        if cfg.coco_root is None:
            from coco14.synthetic import CATEGORIES, generate
            n_classes = cfg.synthetic_n_classes or len(CATEGORIES)
            logger.info('no --coco_root: using a synthetic COCO-format dataset (%d train, %d val, %d px, %d of the '
                        '80 classes, context bias %.2f) in %s', cfg.synthetic_n_train, cfg.synthetic_n_val,
                        cfg.synthetic_size, n_classes, cfg.context_bias, cfg.coco_source)
            generate(cfg.coco_source, n_train=cfg.synthetic_n_train, n_val=cfg.synthetic_n_val,
                     size=cfg.synthetic_size, context_bias=cfg.context_bias, seed=cfg.seed, n_classes=n_classes)
        else:
            coco_dataset.check_coco_root(cfg.coco_root)
        from step.common import run_in_workers
        coco_dataset.prepare(cfg.coco_source, cfg.dataset_root, cfg.work_dir / 'cache',
                             lambda worker, jobs, desc: run_in_workers(worker, jobs, cfg.num_workers, desc))
    torchutils.barrier()


def check_work_dir(work_dir: Path) -> None:
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        probe = work_dir / f'.write_test.{os.getpid()}'
        probe.write_bytes(b'0' * 1024)
        probe.unlink()
    except OSError as e:
        raise BadInputError(f'--work_dir {work_dir}: not writable ({e.strerror}); choose another folder') from None


def run_pipeline(cfg: Config) -> dict:
    from misc import torchutils
    from step import pipeline
    from step.report import write_summary, write_report
    results = {}
    for step in cfg.steps:
        module_name, step_cfg = step_config(cfg, step)
        if module_name is None:
            logger.info('== %s: not a step of --method %s, skipped', step, cfg.method)
            continue
        logger.info('== %s', step)
        start = time.perf_counter()
        results[step] = pipeline.run_step(step_cfg, split_step(step)[0], label=step)
        elapsed = time.perf_counter() - start
        timing = {'seconds': round(elapsed, 2)}
        results[step] = dict(results[step] or {}, **timing) if isinstance(results[step], dict) else timing
        logger.info('%s done in %.1f s', step, elapsed)
    if torchutils.is_main_process():
        summary = write_summary(cfg, {k: v.get('seconds') for k, v in results.items()})
        if summary is not None:
            logger.info('\n%s', summary)
        report = write_report(cfg)
        if report is not None:
            logger.info('report: %s', report)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = parse_config(argv)
    try:
        from misc import torchutils
        device = torchutils.select_device(cfg.device)
        torchutils.init_distributed(device)
        check_work_dir(cfg.work_dir)
        setup_logging(cfg, torchutils.is_main_process())
        torchutils.seed_everything(cfg.seed, cfg.deterministic)
        logger.info('profile %s, device %s, %d process(es), steps: %s', cfg.profile, device,
                    torchutils.world_size(), ', '.join(cfg.steps))
        prepare_dataset(cfg)
        if torchutils.is_main_process():
            with atomic_path(cfg.work_dir / 'config.json') as tmp:
                tmp.write_text(cfg.to_json())
        run_pipeline(cfg)
    except BadInputError as e:
        if cfg.debug:
            raise
        print(f'error: {one_line(e)}', file=sys.stderr)
        return 2
    except OSError as e:
        if cfg.debug or e.errno not in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            raise
        print(f'error: cannot write {e.filename or cfg.work_dir}: {e.strerror}; free space or choose another '
              '--work_dir (finished outputs are kept, run again to go on)', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted: finished outputs are kept; run the same command again to go on '
              '(training steps with --resume)', file=sys.stderr)
        return 130
    finally:
        from misc import torchutils
        if torchutils.is_distributed():
            import torch.distributed as dist
            dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(main())
