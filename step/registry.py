"""Which step module fills each slot of the pipeline, per method.

Every method runs the same slots in the same order (`misc.config.PASS_STEPS`); the CDA pass repeats
them from its own CAM network. A slot a method has no step for maps to None and is skipped.

A step module provides:
  run(cfg) -> dict                 the driver (make_sem_seg and make_ins_seg also take `ids=`; the object
                                   bank asks make_sem_seg for the pseudo masks of the train list)
  SETTINGS                         the Config fields its outputs depend on (its fingerprint): a tuple,
                                   or a function of cfg (the CDA pass adds its own options)
  outputs(cfg) -> list[Path]       files and folders it writes, removed before a redo with new settings
  extra_inputs(cfg) -> dict        optional: signatures of inputs that are not settings (a bank source
                                   folder); weights files named by a setting are signed automatically
"""
from __future__ import annotations

from typing import Optional

# The final segmentation network: the same steps for every method (they read the pass's pseudo masks).
_SEG = {'train_seg': 'step.train_seg', 'make_seg': 'step.make_seg', 'eval_seg': 'step.eval_seg'}

_IRN = {
    'train_cam': 'step.train_cam', 'make_cam': 'step.make_cam', 'eval_cam': 'step.eval_cam',
    'cam_to_ir_label': 'step.cam_to_ir_label', 'train_irn': 'step.train_irn',
    'make_sem_seg': 'step.make_sem_seg_labels', 'eval_sem_seg': 'step.eval_sem_seg',
    'make_ins_seg': 'step.make_ins_seg_labels', 'eval_ins_seg': 'step.eval_ins_seg', **_SEG,
}

STEP_MODULES: dict[str, dict[str, Optional[str]]] = {
    'irn': _IRN,
    'affinitynet': {
        'train_cam': 'step.train_cam', 'make_cam': 'step.make_cam_psa', 'eval_cam': 'step.eval_cam',
        'cam_to_ir_label': 'step.make_crf_labels', 'train_irn': 'step.train_aff',
        'make_sem_seg': 'step.make_sem_seg_aff', 'eval_sem_seg': 'step.eval_sem_seg', **_SEG,
    },
    'seam': {               # SEAM's CAMs; then the AffinityNet steps with SEAM's settings
        'train_cam': 'step.train_seam', 'make_cam': 'step.make_cam_seam', 'eval_cam': 'step.eval_cam',
        'cam_to_ir_label': 'step.make_crf_labels', 'train_irn': 'step.train_aff',
        'make_sem_seg': 'step.make_sem_seg_aff', 'eval_sem_seg': 'step.eval_sem_seg', **_SEG,
    },
}

# Steps outside the per-method pass.
SHARED_MODULES = {'make_object_bank': 'step.make_object_bank'}

# The steps whose outputs each step reads, in the same pass (their fingerprints are part of its own).
UPSTREAM: dict[str, tuple[str, ...]] = {
    'train_cam': (), 'make_cam': ('train_cam',), 'eval_cam': ('make_cam',),
    'cam_to_ir_label': ('make_cam',), 'train_irn': ('cam_to_ir_label',),
    'make_sem_seg': ('make_cam', 'train_irn'), 'eval_sem_seg': ('make_sem_seg',),
    'make_ins_seg': ('make_cam', 'train_irn'), 'eval_ins_seg': ('make_ins_seg',),
    'make_object_bank': (),
    'train_seg': ('make_sem_seg',), 'make_seg': ('train_seg',), 'eval_seg': ('make_seg',),
}


def upstream_of(step: str, stage: str, bank_from_folder: bool) -> list[tuple[str, str]]:
    """(step, stage) pairs a step reads: the same pass's steps, plus the object bank for the CDA pass's CAM
    training, and the baseline's pseudo masks for the bank unless it is cut from a given folder."""
    if step == 'train_seg' and stage == 'fully_supervised':
        return []                       # the upper bound trains on the ground truth, not on pseudo masks
    found = [(name, stage) for name in UPSTREAM.get(step, ())]
    if step == 'train_cam' and stage == 'cda':
        found.append(('make_object_bank', ''))
    if step == 'make_object_bank' and not bank_from_folder:
        found.append(('make_sem_seg', ''))
    return found


def module_for(method: str, slot: str) -> Optional[str]:
    """The module name of a slot (`make_cam`, ...; without the `cda_` prefix) for a method, or None."""
    if slot in SHARED_MODULES:
        return SHARED_MODULES[slot]
    return STEP_MODULES[method].get(slot)
