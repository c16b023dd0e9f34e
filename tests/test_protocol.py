"""Every registered step of every method keeps the step protocol of step/registry.py, and the check
itself fails on a step that breaks it."""
from __future__ import annotations

import dataclasses
import inspect
import re
import types
from pathlib import Path

import pytest

from misc.config import Config
from step import registry

FIELDS = {f.name for f in dataclasses.fields(Config)}
DECLARED = ('run', 'settings', 'reads', 'outputs')
# What a slot's modules provide beyond the protocol, for the steps that read them.
SLOT_READERS = {'make_sem_seg': ('walked_scores', 'mask_threshold')}


def configs(method: str, tmp_path: Path) -> list[Config]:
    """The method's configs of both passes, with and without a bank folder (reads depend on them)."""
    base = registry.parse_config(['--method', method, '--profile', 'smoke', '--work_dir', str(tmp_path)])
    return [dataclasses.replace(base, stage=stage, cda_bank_source=source)
            for stage in ('', 'cda') for source in (None, tmp_path / 'bank')]


def protocol_problems(slot: str, module, cfgs: list[Config]) -> list[str]:
    """What a step module filling `slot` gets wrong about the protocol; [] when nothing."""
    name = getattr(module, '__name__', repr(module))
    missing = [attr for attr in DECLARED + SLOT_READERS.get(slot, ()) if not callable(getattr(module, attr, None))]
    if missing:
        return [f'{name}: does not declare {", ".join(missing)}']
    problems = []
    if 'cfg' not in inspect.signature(module.run).parameters:
        problems.append(f'{name}: run does not take cfg')
    order = list(registry.PASS)
    for cfg in cfgs:
        unknown = [s for s in module.settings(cfg) if s not in FIELDS]
        if unknown:
            problems.append(f'{name}: settings name no Config field: {", ".join(unknown)}')
        for read in module.reads(cfg):
            if read in registry.SHARED:
                continue
            if read not in order:
                problems.append(f'{name}: reads {read!r}, which is no slot')
            elif slot in order and order.index(read) >= order.index(slot):
                problems.append(f'{name}: reads {read!r}, which does not run before {slot}')
        paths = module.outputs(cfg)
        if not isinstance(paths, list) or not all(isinstance(p, Path) for p in paths):
            problems.append(f'{name}: outputs is not a list of paths')
    source = inspect.getsource(module) if isinstance(module, types.ModuleType) and module.__spec__ else ''
    asked = set(re.findall(r"pipeline\.need\(\s*\w+\s*,\s*'(\w+)'", source))
    declared = {read for cfg in cfgs for read in module.reads(cfg)}
    if asked - declared:
        problems.append(f'{name}: asks the pipeline for {", ".join(sorted(asked - declared))} without reading it')
    return sorted(set(problems))


@pytest.mark.parametrize('method', sorted(registry.METHODS))
def test_every_registered_step_keeps_the_protocol(method, tmp_path):
    cfgs = configs(method, tmp_path)
    found = 0
    for slot in list(registry.PASS) + list(registry.SHARED):
        module = registry.step_module(method, slot)
        if module is None:
            continue
        found += 1
        assert protocol_problems(slot, module, cfgs) == [], slot
    assert found >= 7                    # CAMs, relation labels and network, masks, evaluations


@pytest.mark.parametrize('method', sorted(registry.METHODS))
def test_every_method_module_is_complete(method, tmp_path):
    module = registry.method(method)
    assert isinstance(module.HELP, str) and module.HELP
    assert set(module.STEPS) <= set(registry.PASS), 'a method fills only the registry\'s slots'
    assert set(module.PROFILES) <= {'paper', 'demo', 'smoke'}
    for values in module.PROFILES.values():
        assert set(values) <= FIELDS
    assert module.validate(configs(method, tmp_path)[0]) == []


def test_the_check_fails_on_a_step_that_breaks_the_protocol(tmp_path):
    cfgs = configs('irn', tmp_path)

    def step(**attrs):
        module = types.SimpleNamespace(__name__='fake', run=lambda cfg: {}, settings=lambda cfg: ('beta',),
                                       reads=lambda cfg: ('make_cam',), outputs=lambda cfg: [cfg.cam_dir])
        for key, value in attrs.items():
            setattr(module, key, value)
        return module

    assert protocol_problems('eval_cam', step(), cfgs) == []
    no_reads = step()
    del no_reads.reads
    assert protocol_problems('eval_cam', no_reads, cfgs) == ['fake: does not declare reads']
    assert protocol_problems('eval_cam', step(settings=('beta',)), cfgs) == ['fake: does not declare settings']
    assert protocol_problems('eval_cam', step(settings=lambda cfg: ('beta', 'no_such_field')), cfgs) == \
        ['fake: settings name no Config field: no_such_field']
    assert protocol_problems('make_cam', step(reads=lambda cfg: ('eval_sem_seg',)), cfgs) == \
        ["fake: reads 'eval_sem_seg', which does not run before make_cam"]
    assert protocol_problems('eval_cam', step(outputs=lambda cfg: 'cam'), cfgs) == \
        ['fake: outputs is not a list of paths']
    assert protocol_problems('make_sem_seg', step(), cfgs) == ['fake: does not declare walked_scores, mask_threshold']


def test_pass_order_and_names_derive_from_the_registry():
    assert registry.PASS_STEPS == ('train_cam', 'make_cam', 'eval_cam', 'make_relation_labels', 'train_relation',
                                   'make_sem_seg', 'eval_sem_seg', 'train_seg', 'make_seg', 'eval_seg',
                                   'make_ins_seg', 'eval_ins_seg')
    assert registry.CDA_STEPS[0] == 'make_object_bank'
    assert registry.BOUND_STEPS == ('fs_train_seg', 'fs_make_seg', 'fs_eval_seg')
    assert registry.split_step('fs_train_seg') == ('train_seg', 'fully_supervised')
    assert registry.split_step('cda_make_cam') == ('make_cam', 'cda') and registry.split_step('make_cam') == ('make_cam', '')
    assert registry.CDA_STEPS[1:] == tuple(f'cda_{s}' for s in registry.PASS_STEPS)
    assert registry.module_for('irn', 'train_irn') == registry.module_for('irn', 'train_relation') == 'step.train_irn'
    assert registry.module_for('seam', 'make_ins_seg') is None


def test_eval_sem_seg_reads_walked_scores_only_through_the_pipeline():
    source = Path(registry.step_module('irn', 'eval_sem_seg').__file__).read_text()
    assert 'make_sem_seg_labels' not in source and "'rw'" not in source and 'upsample_scores' not in source
    assert "pipeline.need(cfg, 'make_sem_seg')" in source
