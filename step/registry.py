"""The pipeline's steps: the slots of a pass in order, the module filling each slot per method, the names.

A pass runs `PASS`'s slots in order; the CDA pass repeats them (`cda_<slot>`) from its own CAM network,
after the object bank (`SHARED`). A method (`METHODS`, one module under methods/) fills a slot with its
own step module or leaves it to the default here; a slot filled by None is skipped for that method.

Every step module declares the same four things (tests/test_protocol.py checks them):
  run(cfg) -> dict                  the driver: reads its inputs, writes its outputs, returns its figures
  settings(cfg) -> tuple[str, ...]  the Config fields its outputs depend on (its fingerprint)
  reads(cfg) -> tuple[str, ...]     the slots whose outputs it reads: of its own pass, or a shared step
                                    (their fingerprints enter its own, so a change upstream redoes it)
  outputs(cfg) -> list[Path]        the files and folders it writes, removed before a redo
and may declare `extra_inputs(cfg) -> dict`, signatures of inputs that are not settings (a folder named
by one). A step that needs another slot's outputs beyond what the pass already made asks
`step.pipeline.need` (which runs that slot under its fingerprint for the ids it asks for and returns
its module); it never imports another slot's module. The make_sem_seg modules also provide
`walked_scores(cfg, image_id, size)`, the scores their masks are thresholded from (eval_sem_seg's sweep).

Adding a step: its module, and its slot's line in `PASS` (or a method's `STEPS`).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional, Sequence

from misc import config

# The slots of one pass, in the order they run: slot -> the module filling it unless a method's STEPS
# names another (None: every method names its own, or has none).
PASS: dict[str, Optional[str]] = {
    'train_cam': 'step.train_cam',
    'make_cam': None,
    'eval_cam': 'step.eval_cam',
    'make_relation_labels': None,
    'train_relation': None,
    'make_sem_seg': None,
    'eval_sem_seg': 'step.eval_sem_seg',
    'train_seg': 'step.train_seg',
    'make_seg': 'step.make_seg',
    'eval_seg': 'step.eval_seg',
    'make_ins_seg': None,
    'eval_ins_seg': None,
}

# Steps outside the passes (run in the baseline's stage, read by the CDA pass).
SHARED: dict[str, str] = {'make_object_bank': 'step.make_object_bank'}

# Methods: name -> the module holding its slot map, profiles and checks (methods/README in docs/slots.md).
METHODS: dict[str, str] = {
    'irn': 'methods.irn',
    'affinitynet': 'methods.affinitynet',
    'seam': 'methods.seam',
}

# The reference's (IRNet's) slot names, kept as aliases: `--steps train_irn`, `--train_irn_pass`, ...
SLOT_ALIASES: dict[str, str] = {'cam_to_ir_label': 'make_relation_labels', 'train_irn': 'train_relation'}

PASS_STEPS = tuple(PASS)
CDA_STEPS = tuple(SHARED) + tuple(f'cda_{s}' for s in PASS_STEPS)
# The segmentation network trained on the ground truth of the train list (the fully supervised upper bound,
# `fs_<slot>`, in the `fully_supervised` stage): on the synthetic data, beside baseline and CDA.
BOUND_STEPS = tuple(f'fs_{s}' for s in ('train_seg', 'make_seg', 'eval_seg'))
ALL_STEPS = PASS_STEPS + CDA_STEPS + BOUND_STEPS
# Step-name prefix -> the stage the step runs in (its outputs go to work_dir/<stage>).
STAGE_PREFIXES = {'cda_': 'cda', 'fs_': 'fully_supervised'}
STEP_ALIASES = {**SLOT_ALIASES, **{f'cda_{old}': f'cda_{new}' for old, new in SLOT_ALIASES.items()}}


def method(name: str) -> ModuleType:
    """The module of a method (`methods.irn`, ...)."""
    return importlib.import_module(METHODS[name])


def split_step(step: str) -> tuple[str, str]:
    """(slot, stage) of a step name: 'cda_make_cam' -> ('make_cam', 'cda'), 'make_cam' -> ('make_cam', '')."""
    for prefix, stage in STAGE_PREFIXES.items():
        if step.startswith(prefix):
            return step[len(prefix):], stage
    return step, ''


def module_for(method_name: str, slot: str) -> Optional[str]:
    """The module name filling `slot` (without the `cda_` prefix; an alias is resolved) for a method, or None."""
    slot = SLOT_ALIASES.get(slot, slot)
    if slot in SHARED:
        return SHARED[slot]
    own = method(method_name).STEPS
    return own[slot] if slot in own else PASS[slot]


def step_module(method_name: str, slot: str) -> Optional[ModuleType]:
    name = module_for(method_name, slot)
    return importlib.import_module(name) if name is not None else None


def stage_of_read(slot: str, stage: str) -> str:
    """The stage whose outputs a read of `slot` from a step of `stage` means: shared steps are the baseline's."""
    return '' if slot in SHARED else stage


def catalog() -> config.Catalog:
    """What the command line needs to know about the steps and methods."""
    methods = {}
    for name in METHODS:
        module = method(name)
        methods[name] = config.MethodSpec(name=name, help=module.HELP, profiles=module.PROFILES,
                                          validate=module.validate)
    return config.Catalog(pass_steps=PASS_STEPS, cda_steps=CDA_STEPS, step_aliases=STEP_ALIASES, methods=methods,
                          bound_steps=BOUND_STEPS)


def parse_config(argv: Optional[Sequence[str]] = None) -> config.Config:
    """Flags -> Config, with this registry's steps and methods (see misc.config.parse_config)."""
    return config.parse_config(argv, catalog())


def profile_values(method_name: str, profile: str, dataset: str = 'voc12') -> dict:
    return config.profile_values(catalog().methods[method_name], profile, dataset)
