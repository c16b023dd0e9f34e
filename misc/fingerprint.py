"""What made a step's outputs: its settings, its inputs, and the fingerprints of the steps it read.

Each step's record lives next to its pass's outputs (`<out_dir>/fingerprints/<step>.json`). Before a
step runs, its fingerprint is computed and compared with the record: the same fingerprint resumes (the
step skips finished work as always); a different one removes the step's outputs first, logs which
settings changed, and the step then redoes everything. A step's fingerprint includes those of its
upstream steps, so the steps after a changed one redo theirs as well. Which steps those are, the caller
says (step.pipeline, from each step's declared `reads`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from misc import torchutils
from misc.config import Config, with_stage
from misc.imutils import atomic_path

logger = logging.getLogger(__name__)

# Every output depends on the dataset and on the method.
COMMON_SETTINGS = ('method', 'voc12_root', 'sbd_root', 'synthetic_n_train', 'synthetic_n_val', 'synthetic_size',
                   'context_bias')


def _encode(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


def record_path(cfg: Config, step: str) -> Path:
    return cfg.out_dir / 'fingerprints' / f'{step}.json'


def read_record(cfg: Config, step: str) -> Optional[dict]:
    try:
        return json.loads(record_path(cfg, step).read_text())
    except (OSError, ValueError):
        return None


def file_signature(path: Path) -> dict:
    """Name, size and modification time of a file (cheap: weights files are large)."""
    stat = path.stat()
    return {'path': str(path.resolve()), 'bytes': stat.st_size, 'mtime_ns': stat.st_mtime_ns}


def folder_signature(folder: Path, suffix: str = '.png') -> dict:
    """A folder by its file list and sizes (the user's bank source)."""
    files = sorted((p.name, p.stat().st_size) for p in Path(folder).glob(f'*{suffix}') if not p.name.startswith('.'))
    return {'path': str(Path(folder).resolve()), 'files': len(files),
            'digest': hashlib.sha1(json.dumps(files).encode()).hexdigest()}


# Settings that name a weights file: a step that depends on one also depends on the file's contents.
WEIGHTS_SETTINGS = ('pretrained', 'cam_weights', 'relation_weights', 'seg_pretrained', 'seg_weights')


def weights_inputs(cfg: Config, names) -> dict:
    """Signatures of the weights files among the named settings (`imagenet`/`none`/unset are not files)."""
    found = {}
    for name in names:
        value = getattr(cfg, name, None)
        if name in WEIGHTS_SETTINGS and value not in (None, 'imagenet', 'none') and Path(value).is_file():
            found[name] = file_signature(Path(value))
    return found


# Added for another dataset than VOC only, so that the digests of VOC work dirs made before --dataset
# existed stay what they were (tests/test_coco_dataset.py checks them).
DATASET_SETTINGS = ('dataset', 'coco_root')


def settings_of(module, cfg: Config) -> tuple[str, ...]:
    dataset = DATASET_SETTINGS if cfg.dataset != 'voc12' else ()
    return COMMON_SETTINGS + dataset + tuple(module.settings(cfg))


def compute(cfg: Config, step: str, module, upstream_steps: Sequence[tuple[str, str]]) -> dict:
    """{'settings', 'inputs', 'upstream', 'digest'} of a step (`step` without the `cda_` prefix) whose
    outputs depend on those of `upstream_steps`, (step, stage) pairs."""
    settings = {name: _encode(getattr(cfg, name)) for name in settings_of(module, cfg)}
    inputs = weights_inputs(cfg, settings)
    inputs.update(module.extra_inputs(cfg) if hasattr(module, 'extra_inputs') else {})
    upstream = {}
    for name, stage in upstream_steps:
        record = read_record(with_stage(cfg, stage), name)
        upstream[f'{stage}/{name}' if stage else name] = record['digest'] if record else None
    body = {'settings': settings, 'inputs': inputs, 'upstream': upstream}
    digest = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return dict(body, digest=digest)


def changes(old: dict, new: dict) -> list[str]:
    """Readable names of what differs between two fingerprints."""
    found = []
    for key in sorted(set(old.get('settings', {})) | set(new['settings'])):
        before, after = old.get('settings', {}).get(key), new['settings'].get(key)
        if before != after:
            found.append(f'--{key} {before} -> {after}')
    for key in sorted(set(old.get('inputs', {})) | set(new['inputs'])):
        if old.get('inputs', {}).get(key) != new['inputs'].get(key):
            found.append(f'input {key}')
    for key in sorted(set(old.get('upstream', {})) | set(new['upstream'])):
        if old.get('upstream', {}).get(key) != new['upstream'].get(key):
            found.append(f'upstream {key}')
    return found


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _write(cfg: Config, step: str, record: dict) -> None:
    path = record_path(cfg, step)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))


def prepare(cfg: Config, step: str, module, upstream_steps: Sequence[tuple[str, str]],
            label: Optional[str] = None) -> dict:
    """Compare the step's fingerprint with its record; on a difference remove its outputs. Returns the
    new fingerprint (to be recorded by `finish`)."""
    label = label or step
    new = compute(cfg, step, module, upstream_steps)
    if torchutils.is_main_process():
        old = read_record(cfg, step)
        outputs = [p for p in module.outputs(cfg) if p.exists()]
        if old is not None and old['digest'] != new['digest']:
            logger.info('%s: redoing its outputs, changed since they were made: %s', label,
                        ', '.join(changes(old, new)) or 'fingerprint format')
            for path in outputs:
                _remove(path)
        elif old is None and outputs:
            logger.info('%s: outputs without a record of the settings that made them (%s ...); redoing them',
                        label, outputs[0])
            for path in outputs:
                _remove(path)
        _write(cfg, step, dict(new, state='running'))
    torchutils.barrier()
    return new


def finish(cfg: Config, step: str, fingerprint: dict) -> None:
    if torchutils.is_main_process():
        _write(cfg, step, dict(fingerprint, state='done'))
