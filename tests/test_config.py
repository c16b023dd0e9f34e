"""Flags -> Config: booleans that really parse, checked steps and values, typed numbers, profiles, JSON."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from misc.config import PROFILES, Config, from_dict, with_stage
from step.registry import ALL_STEPS, CDA_STEPS, PASS_STEPS, parse_config
from misc.indexing import PathIndex


def steps_of(*argv: str) -> tuple[str, ...]:
    """Steps chosen by `argv` on the smoke profile (the demo profile adds the CDA pass by default)."""
    return parse_config(['--profile', 'smoke', *argv]).steps


def test_demo_default_runs_baseline_and_cda() -> None:
    assert parse_config([]).steps == ALL_STEPS
    assert parse_config(['--cda', 'false']).steps == PASS_STEPS
    assert parse_config(['--profile', 'paper']).steps == PASS_STEPS


def rejected(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Parse `argv`, expect argparse's exit (status 2), and return the error line (the usage line before it
    names every flag, so only the last line can tell which value was refused)."""
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[-1].startswith('run_sample.py: error: ')
    return lines[-1]


# ----------------------------------------------------------------------------- step switches

@pytest.mark.parametrize('argv', [
    ['--train_cam_pass', 'false'],
    ['--train_cam_pass', 'False'],
    ['--train_cam_pass=false'],
    ['--train_cam_pass', '0'],
    ['--no-train_cam_pass'],
    ['--no_train_cam_pass'],
])
def test_step_switch_turns_a_step_off(argv: list[str]) -> None:
    steps = steps_of(*argv)
    assert 'train_cam' not in steps
    # only that step goes: the rest of the pass is still there, in order
    assert steps == tuple(s for s in PASS_STEPS if s != 'train_cam')


@pytest.mark.parametrize('argv', [
    ['--train_cam_pass'],
    ['--train_cam_pass', 'true'],
    ['--train_cam_pass=true'],
    ['--train_cam_pass=yes'],
])
def test_step_switch_turns_a_step_on(argv: list[str]) -> None:
    # --steps leaves train_cam out; the switch brings it back, in pipeline order
    assert steps_of('--steps', 'make_cam,eval_cam', *argv) == ('train_cam', 'make_cam', 'eval_cam')


def test_reference_style_true_keeps_every_step() -> None:
    # The reference's string flags turned a step off for ANY value, 'True' included.
    assert steps_of('--train_cam_pass', 'True', '--eval_cam_pass=true') == PASS_STEPS


def test_negative_switch_takes_no_value_and_bad_booleans_fail(capsys) -> None:
    assert 'takes no value' in rejected(['--no-train_cam_pass=true'], capsys)
    assert 'maybe' in rejected(['--train_cam_pass', 'maybe'], capsys)


def test_other_boolean_flags_parse() -> None:
    cfg = parse_config(['--overwrite', '--amp', 'false', '--no-resume', '--deterministic=true'])
    assert (cfg.overwrite, cfg.amp, cfg.resume, cfg.deterministic) == (True, False, False, True)
    assert parse_config(['--overwrite', 'false']).overwrite is False


def test_steps_list_is_checked_and_ordered(capsys) -> None:
    assert steps_of('--steps', 'eval_cam,train_cam') == ('train_cam', 'eval_cam')
    assert steps_of('--steps', ' make_cam , eval_cam ') == ('make_cam', 'eval_cam')
    err = rejected(['--steps', 'train_cam,make_cams'], capsys)
    assert 'make_cams' in err and 'unknown step' in err


# ----------------------------------------------------------------------------- value checks and types

@pytest.mark.parametrize('argv', [
    ['--cam_eval_thres', '1.5'],
    ['--cam_eval_thres', '-0.1'],
    ['--conf_fg_thres', '1.01'],
    ['--conf_bg_thres', '-0.5'],
    ['--sem_seg_bg_thres', '2'],
    ['--sweep', '0.1', '1.2'],
    ['--context_bias', '1.5'],
    ['--cam_crop_size', '0'],
    ['--irn_crop_size', '-64'],
    ['--cam_batch_size', '0'],
    ['--irn_batch_size', '-2'],
    ['--cam_num_epoches', '0'],
    ['--irn_num_epoches', '-1'],
    ['--cam_learning_rate', '0'],
    ['--cam_scales', '1.0', '0'],
    ['--synthetic_n_train', '0'],
    ['--num_workers', '-1'],
    ['--cam_batch_size', '2.5'],
    ['--cam_learning_rate', 'fast'],
])
def test_out_of_range_values_error(argv: list[str], capsys) -> None:
    err = rejected(argv, capsys)
    assert argv[0] in err   # the message names the flag


@pytest.mark.parametrize('argv, flag', [
    (['--conf_fg_thres', '0.2', '--conf_bg_thres', '0.4'], '--conf_bg_thres'),
    (['--cam_resize_long', '200', '100'], '--cam_resize_long'),
    (['--irn_rescale', '1.5', '0.5'], '--irn_rescale'),
    (['--pretrained', '/no/such/resnet.pth'], '--pretrained'),
    (['--irn_crop_size', '64'], '--irn_crop_size'),      # radius-10 pairs need a 20x20 map at stride 4
    (['--voc12_root', '.', '--irn_backbone_lr_mult', '1'], '--irn_backbone_lr_mult'),   # ImageNet: frozen
    (['--irn_backbone_lr_mult', '-1'], '--irn_backbone_lr_mult'),
])
def test_inconsistent_values_error(argv: list[str], flag: str, capsys) -> None:
    assert flag in rejected(argv, capsys)


def test_thresholds_at_the_bounds_are_accepted() -> None:
    cfg = parse_config(['--conf_bg_thres', '0', '--conf_fg_thres', '1', '--cam_eval_thres', '1.0'])
    assert (cfg.conf_bg_thres, cfg.conf_fg_thres, cfg.cam_eval_thres) == (0.0, 1.0, 1.0)


def test_numeric_flags_arrive_typed() -> None:
    cfg = parse_config(['--cam_learning_rate', '0.05', '--cam_batch_size', '4', '--cam_crop_size', '96',
                        '--cam_scales', '1', '0.5', '1.5', '--cam_resize_long', '100', '200',
                        '--irn_rescale', '0.5', '1', '--sweep', '0.1', '0.2', '--beta', '7',
                        '--exp_times', '0', '--conf_fg_thres', '0.7', '--seed', '3'])
    assert type(cfg.cam_learning_rate) is float and cfg.cam_learning_rate == 0.05
    assert type(cfg.cam_batch_size) is int and cfg.cam_batch_size == 4
    assert type(cfg.cam_crop_size) is int and type(cfg.beta) is int and type(cfg.seed) is int
    assert cfg.exp_times == 0
    assert cfg.cam_scales == (1.0, 0.5, 1.5) and all(type(s) is float for s in cfg.cam_scales)
    assert cfg.cam_resize_long == (100, 200) and all(type(s) is int for s in cfg.cam_resize_long)
    assert cfg.irn_rescale == (0.5, 1.0)
    assert cfg.sweep == (0.1, 0.2)
    assert type(cfg.conf_fg_thres) is float
    assert isinstance(cfg.work_dir, Path)


def test_config_is_frozen() -> None:
    cfg = parse_config([])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cam_batch_size = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------- profiles

def test_profile_defaults(tmp_path: Path) -> None:
    demo = parse_config([])
    assert demo.profile == 'demo' and demo.voc12_root is None
    assert demo.backbone == PROFILES['demo']['backbone'] == 'resnet18'
    assert demo.cam_batch_size == 12 != PROFILES['demo']['cam_batch_size']     # IRNet's own (methods/irn.py)
    assert parse_config(['--method', 'affinitynet']).cam_batch_size == PROFILES['demo']['cam_batch_size']
    coco = parse_config(['--dataset', 'coco14'])      # the COCO demo keeps what it was measured with
    assert (coco.cam_batch_size, coco.irn_crop_size, coco.irn_num_epoches) == (16, 128, 4)
    assert demo.dataset_root == demo.work_dir / 'synthetic_voc'

    paper = parse_config(['--voc12_root', str(tmp_path)])
    defaults = Config()
    assert paper.profile == 'paper' and paper.voc12_root == tmp_path and paper.dataset_root == tmp_path
    assert (paper.backbone, paper.pretrained) == ('resnet50', 'imagenet')
    assert (paper.cam_batch_size, paper.cam_crop_size, paper.conf_fg_thres, paper.conf_bg_thres) == \
        (defaults.cam_batch_size, 512, 0.30, 0.05)

    smoke = parse_config(['--profile', 'smoke', '--voc12_root', str(tmp_path)])
    assert smoke.profile == 'smoke' and smoke.num_workers == 0 and smoke.cam_num_epoches == 1


def test_explicit_flags_override_the_profile(tmp_path: Path) -> None:
    cfg = parse_config(['--profile', 'smoke', '--cam_batch_size', '4', '--backbone', 'resnet50',
                        '--conf_fg_thres', '0.9'])
    assert (cfg.cam_batch_size, cfg.backbone, cfg.conf_fg_thres) == (4, 'resnet50', 0.9)
    assert cfg.cam_crop_size == PROFILES['smoke']['cam_crop_size']     # untouched keys keep the profile's
    paper = parse_config(['--voc12_root', str(tmp_path), '--backbone', 'resnet18', '--pretrained', 'none'])
    assert (paper.profile, paper.backbone, paper.pretrained) == ('paper', 'resnet18', 'none')


@pytest.mark.parametrize('profile', sorted(PROFILES))
def test_every_profile_is_valid_and_its_irn_crop_fits_radius_10(profile: str) -> None:
    cfg = parse_config(['--profile', profile])
    # train_irn indexes pixel pairs within radius 10 on the crop at stride 4: the map must be wider
    # than 2 * (radius - 1), or PathIndex cannot build its windows.
    index = PathIndex(radius=10, default_size=(cfg.irn_crop_size // 4, cfg.irn_crop_size // 4))
    assert index.src_indices.size > 0


# ----------------------------------------------------------------------------- CDA

def test_cda_flags_choose_the_steps(capsys) -> None:
    assert steps_of('--cda') == ALL_STEPS
    assert steps_of('--cda_only') == CDA_STEPS
    assert steps_of('--cda', 'false') == PASS_STEPS
    assert steps_of('--cda', '--no-cda_eval_cam_pass') == tuple(s for s in ALL_STEPS if s != 'cda_eval_cam')
    assert steps_of('--cda_only', '--train_cam_pass') == ('train_cam',) + CDA_STEPS


def test_cda_needs_a_batch_of_two(capsys) -> None:
    assert '--cam_batch_size' in rejected(['--cam_batch_size', '1', '--cda'], capsys)
    assert '--cam_batch_size' in rejected(['--cam_batch_size', '1', '--cda_only'], capsys)
    assert parse_config(['--cam_batch_size', '1', '--cda', 'false']).cam_batch_size == 1   # fine without CDA
    assert parse_config(['--cam_batch_size', '2', '--cda']).cam_batch_size == 2


def test_stage_moves_outputs_under_work_dir(tmp_path: Path) -> None:
    cfg = parse_config(['--work_dir', str(tmp_path)])
    cda = with_stage(cfg, 'cda')
    assert cfg.cam_dir == tmp_path / 'cam' and cda.cam_dir == tmp_path / 'cda' / 'cam'
    assert cda.object_bank_dir == cfg.object_bank_dir == tmp_path / 'object_bank'


# ----------------------------------------------------------------------------- JSON

@pytest.mark.parametrize('argv', [
    [],
    ['--cda', '--sweep', '0.1', '0.5', '--cam_scales', '1', '0.5', '--cam_resize_long', '64', '96',
     '--sbd_root', 'sbd', '--cda_bank_source', 'bank', '--train_list', 'train', '--amp'],
])
def test_to_json_round_trips(argv: list[str], tmp_path: Path) -> None:
    cfg = parse_config(argv + ['--work_dir', str(tmp_path / 'wd'), '--voc12_root', str(tmp_path)])
    payload = json.loads(cfg.to_json())
    assert payload['voc12_root'] == str(tmp_path) and isinstance(payload['cam_scales'], list)
    back = from_dict(payload)
    assert back == cfg
    assert isinstance(back.work_dir, Path) and isinstance(back.cam_scales, tuple)
    assert isinstance(back.steps, tuple)
    # unknown keys (a newer config.json) are ignored rather than failing
    assert from_dict({**payload, 'not_a_field': 1}) == cfg


def test_to_json_round_trips_without_a_dataset_root() -> None:
    cfg = parse_config([])
    back = from_dict(json.loads(cfg.to_json()))
    assert back == cfg and back.voc12_root is None and back.sbd_root is None


def test_demo_fine_tunes_the_irn_backbone_and_paper_keeps_it_frozen() -> None:
    demo, paper = parse_config([]), parse_config(['--voc12_root', '.'])
    assert demo.pretrained == 'none' and demo.irn_backbone_lr_mult > 0
    assert paper.pretrained == 'imagenet' and paper.irn_backbone_lr_mult == 0
    assert (paper.conf_fg_thres, paper.conf_bg_thres, paper.exp_times) == (0.30, 0.05, 8)   # the reference's


@pytest.mark.parametrize('method, backbone', [('seam', 'resnet50'), ('seam', 'resnet18'),
                                              ('affinitynet', 'resnet50'), ('irn', 'resnet38')])
def test_a_backbone_that_does_not_fit_the_method_is_one_error_line(method, backbone, capsys) -> None:
    line = rejected(['--method', method, '--backbone', backbone], capsys)
    assert line == (f'run_sample.py: error: --backbone {backbone} does not fit --method {method}: affinitynet '
                    'and seam use resnet38, irn resnet50 or resnet18')


def test_the_reference_names_are_aliases_of_the_slots(tmp_path) -> None:
    weights = tmp_path / 'res50_irn.pth'
    weights.write_bytes(b'x')
    by_alias = parse_config(['--profile', 'smoke', '--irn_weights', str(weights), '--steps', 'cam_to_ir_label,train_irn',
                             '--cda_train_irn_pass'])
    by_slot = parse_config(['--profile', 'smoke', '--relation_weights', str(weights), '--steps',
                            'make_relation_labels,train_relation', '--cda_train_relation_pass'])
    assert by_alias == by_slot
    assert by_slot.steps == ('make_relation_labels', 'train_relation', 'cda_train_relation')
    assert by_slot.relation_weights == weights
    assert steps_of('--no-train_irn_pass') == tuple(s for s in PASS_STEPS if s != 'train_relation')
    old = json.loads(by_slot.to_json())
    old['irn_weights'] = old.pop('relation_weights')      # a config.json written before the rename
    assert from_dict(old) == by_slot
