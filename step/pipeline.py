"""Running the registry's steps: each under its fingerprint, and the one way a step asks for another's outputs.

`run_step(cfg, slot)` runs the module filling `slot` for cfg's method: its fingerprint (settings, inputs,
the recorded fingerprints of the slots it `reads`) is compared with the record of its last run, outputs
made with other settings are removed first (misc.fingerprint), then `run(cfg)` goes on from what is
left. `need(cfg, slot, ids)` is how a step gets outputs its pass does not already make: the object bank
needs the baseline's pseudo masks of the train list (`ids`), eval_sem_seg needs make_sem_seg's
`walked_scores` reader. The slot must be one the step `reads`.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional, Sequence

from misc import fingerprint
from misc.config import Config, with_stage
from misc.imutils import BadInputError
from step import registry


def upstream(cfg: Config, module: ModuleType) -> list[tuple[str, str]]:
    """(slot, stage) of every slot a step module reads, in cfg's pass (shared steps: the baseline's)."""
    return [(name, registry.stage_of_read(name, cfg.stage)) for name in module.reads(cfg)]


def fingerprint_of(cfg: Config, slot: str, module: Optional[ModuleType] = None) -> dict:
    """The fingerprint a slot's step would run under now (`module`: the one filling it by default)."""
    module = module or registry.step_module(cfg.method, slot)
    return fingerprint.compute(cfg, slot, module, upstream(cfg, module))


def run_step(cfg: Config, slot: str, label: Optional[str] = None,
             ids: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Run a slot's module for cfg's method under its fingerprint (on `ids` only, where given and the step
    makes per-image outputs of a list); None if the method has no such step."""
    module = registry.step_module(cfg.method, slot)
    if module is None:
        return None
    record = fingerprint.prepare(cfg, slot, module, upstream(cfg, module), label)
    result = module.run(cfg) if ids is None else module.run(cfg, ids=ids)
    fingerprint.finish(cfg, slot, record)
    return result


def need(cfg: Config, slot: str, ids: Optional[Sequence[str]] = None, label: Optional[str] = None) -> ModuleType:
    """The module filling `slot` for cfg's method, to read its outputs through its own functions; with
    `ids`, its outputs for those images are made first (under its fingerprint, as `run_step`)."""
    module = registry.step_module(cfg.method, slot)
    if module is None:
        raise BadInputError(f'--method {cfg.method} has no {slot} step, which this step needs')
    if ids is not None:
        run_step(cfg, slot, label=label or f'{slot} (for {len(ids)} images)', ids=ids)
    return module
