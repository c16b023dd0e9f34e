"""benchmarks/demo_seeds.py: the arms' flags and the paired table, on made-up run summaries."""
from __future__ import annotations

import importlib
import json

import pytest


@pytest.fixture(scope='module')
def demo_seeds():
    return importlib.import_module('benchmarks.demo_seeds')


def test_arm_flags(demo_seeds, tmp_path):
    assert demo_seeds.arm_args('cda', tmp_path) == []
    assert demo_seeds.arm_args('cda_oracle', tmp_path) == [
        '--cda_bank_source', tmp_path / 'synthetic_voc' / 'SegmentationClass']
    assert demo_seeds.arm_args('paste_usual', tmp_path) == ['--cda_paste_context', 'usual']
    assert demo_seeds.arm_args('paste_foreign', tmp_path) == ['--cda_paste_context', 'foreign']
    assert demo_seeds.arm_args('cda_full', tmp_path) == ['--cda_schedule', 'full']
    assert demo_seeds.arm_args('pasted_cls_only', tmp_path) == ['--no-cda_seam_equivariance']
    assert demo_seeds.arm_args('baseline_long', tmp_path, epochs=6) == ['--cam_num_epoches', 12]


def test_cam_epochs_of_a_table_run(demo_seeds):
    quick = [str(a) for a in demo_seeds.QUICK['seam']]
    assert demo_seeds.cam_epochs('seam', ['--method', 'seam', *quick]) == 4
    assert demo_seeds.cam_epochs('affinitynet', ['--cam_num_epoches', '6', '--cam_num_epoches', '3']) == 3
    assert demo_seeds.cam_epochs('irn', []) == 8                          # the demo profile's own
    assert demo_seeds.cam_epochs('irn', ['--profile', 'demo', '--profile', 'smoke']) == 1


def _summary(base_cam: float, cam: float) -> dict:
    figures = lambda v: {'cam_miou': v, 'cam_miou_shift': v / 2, 'leakage_usual': 0.3,  # noqa: E731
                         'leakage_foreign': None, 'leakage_shift': 0.5, 'sem_seg_miou': v + 0.01}
    return {'baseline': figures(base_cam), 'cda': None if cam is None else figures(cam), 'wall_seconds': 10.0}


def test_results_pair_each_arm_with_its_own_seeds_baseline(demo_seeds, tmp_path):
    results = demo_seeds.Results(tmp_path, [0, 1, 2], 'header')
    gains = {'cda': (0.02, 0.04), 'cda_oracle': (0.05, 0.05), 'paste_usual': (0.0, 0.0),
             'paste_foreign': (0.01, 0.03)}
    for seed, base in ((0, 0.40), (1, 0.50)):
        results.add(seed, 'baseline', _summary(base, None))
        for arm, per_seed in gains.items():                     # each arm's own run: only its CDA pass is read
            results.add(seed, arm, _summary(-1.0, base + per_seed[seed]))
    results.add(2, 'baseline', _summary(0.45, None))
    results.add(2, 'cda', _summary(-1.0, 0.46))                     # seed 2 unfinished: left out

    assert results.complete_seeds() == [0, 1]
    table = results.comparisons()
    cda = table['cda - baseline']['cam_miou']
    assert cda['n'] == 2 and cda['mean'] == pytest.approx(0.03)
    assert table['cda_oracle - baseline']['cam_miou']['sd'] == pytest.approx(0.0, abs=1e-12)
    assert table['paste_foreign - paste_usual']['cam_miou']['mean'] == pytest.approx(0.02)
    assert table['cda - baseline']['leakage_foreign'] is None          # no scene pairs: no figure
    written = json.loads((tmp_path / 'results.json').read_text())
    assert written['seeds'] == [0, 1]
    text = (tmp_path / 'results.md').read_text()
    assert '| cda - baseline | +3.0 ± 1.4' in text and '| baseline | 45.0 ± 7.1' in text


def test_resnet38_tables_add_the_full_schedule_arm_and_its_pair_with_cda(demo_seeds, tmp_path):
    results = demo_seeds.Results(tmp_path, [0, 1], 'header', demo_seeds.DEFAULT_ARMS['seam'])
    for seed, base in ((0, 0.30), (1, 0.20)):
        results.add(seed, 'baseline', _summary(base, None))
        for arm, gain in (('cda', -0.02), ('cda_oracle', 0.0), ('paste_usual', 0.0), ('paste_foreign', 0.0),
                          ('cda_full', 0.01 + seed / 100), ('pasted_cls_only', 0.03)):
            results.add(seed, arm, _summary(-1.0, base + gain))
        results.add(seed, 'baseline_long', _summary(base + 0.02, None))     # a run without CDA: its baseline
    assert results.complete_seeds() == [0, 1]
    table = results.comparisons()
    assert table['cda_full - cda']['cam_miou']['mean'] == pytest.approx(0.035)
    assert table['cda_full - baseline']['cam_miou']['mean'] == pytest.approx(0.015)
    assert '| cda_full - cda | +3.5 ± 0.7' in (tmp_path / 'results.md').read_text()
    assert table['baseline_long - baseline']['cam_miou']['mean'] == pytest.approx(0.02)
    assert table['cda_full - baseline_long']['cam_miou']['mean'] == pytest.approx(-0.005)
    assert table['pasted_cls_only - cda']['cam_miou']['mean'] == pytest.approx(0.05)
    assert 'pasted_cls_only' not in demo_seeds.DEFAULT_ARMS['affinitynet']
    irn = demo_seeds.Results(tmp_path / 'irn', [0], 'header')       # IRNet's table keeps its four arms
    assert 'cda_full - cda' not in irn.comparisons() and 'cda_full' not in irn.arms


def test_quick_sizes_name_each_methods_own_epochs(demo_seeds):
    assert '--irn_num_epoches' in demo_seeds.QUICK['irn']
    for method in ('affinitynet', 'seam'):
        assert '--aff_num_epoches' in demo_seeds.QUICK[method] and '--irn_num_epoches' not in demo_seeds.QUICK[method]


def test_choose_takes_the_best_mean_over_tuning_seeds(demo_seeds):
    curves = [{0.2: 0.50, 0.3: 0.40}, {0.2: 0.30, 0.3: 0.45}]      # means 0.40 and 0.425
    assert demo_seeds.choose(curves) == (0.3, pytest.approx(0.425))
    walk = [{(3, 0.25): 0.4, (4, 0.25): 0.5, (4, 0.3): 0.1}, {(3, 0.25): 0.6, (4, 0.25): 0.4}]
    assert demo_seeds.choose(walk)[0] == (3, 0.25)                  # keys missing on a seed do not count


def test_run_jobs_runs_queued_jobs_in_priority_order_and_reports_failures(demo_seeds):
    done, failures = [], []

    def first(push):
        done.append('first')
        push((0, 2), lambda _push: done.append('late'))
        push((0, 1), lambda _push: done.append('early'))

    def broken(_push):
        raise RuntimeError('broken run')

    demo_seeds.run_jobs([((0, 0), first), ((1, 0), broken), ((2, 0), lambda _push: done.append('last'))], 1,
                        failures)
    assert done == ['first', 'early', 'late', 'last']
    assert failures == ['broken run']


def test_tuning_seeds_must_not_be_table_seeds(demo_seeds, capsys):
    with pytest.raises(SystemExit):
        demo_seeds.main(['--seeds', '0', '1', '--tune_seeds', '1', '2'])
    assert 'must not overlap' in capsys.readouterr().err


def test_resume_keeps_the_recorded_runs_of_the_same_settings(demo_seeds, tmp_path):
    first = demo_seeds.Results(tmp_path, [0, 1], 'header', ('cda', 'cda_full'))
    first.add(0, 'baseline', _summary(0.30, None))
    first.add(0, 'cda', _summary(-1.0, 0.28))
    first.add(0, 'cda_full', _summary(-1.0, 0.35))
    first.add(1, 'baseline', _summary(0.20, None))               # seed 1 unfinished
    first.write()
    again = demo_seeds.Results(tmp_path, [0, 1], 'header', ('cda', 'cda_full', 'baseline_long'))
    again.resume()
    assert set(again.figures[0]) == {'baseline', 'cda', 'cda_full'} and set(again.figures[1]) == {'baseline'}
    assert again.figures[0]['cda_full']['cam_miou'] == 0.35 and again.seconds[0]['cda'] == 10.0
    assert again.complete_seeds() == []                        # baseline_long still to run
    other = demo_seeds.Results(tmp_path, [0], 'other header', ('cda',))
    with pytest.raises(SystemExit, match='other settings'):
        other.resume()


def test_a_method_only_arm_is_refused_for_another_method(demo_seeds, capsys):
    with pytest.raises(SystemExit):
        demo_seeds.main(['--method', 'affinitynet', '--arms', 'pasted_cls_only', '--seeds', '0'])
    assert 'pasted_cls_only is for --method seam only' in capsys.readouterr().err
