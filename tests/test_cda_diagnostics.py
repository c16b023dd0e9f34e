"""benchmarks/cda_diagnostics.py: the bank's figures against the ground truth, and the pairs' crop survival."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from misc.imutils import save_label_png


@pytest.fixture(scope='module')
def diagnostics():
    return importlib.import_module('benchmarks.cda_diagnostics')


def test_bank_figures_against_the_ground_truth(diagnostics, tmp_path):
    masks, truth = tmp_path / 'masks', tmp_path / 'truth'
    masks.mkdir(), truth.mkdir()
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 3                                         # the object: 4 pixels of class 3
    gt_a = np.zeros((4, 4), np.uint8)
    gt_a[:2, :1] = 3                                         # truth: half of them are class 3
    gt_b = np.zeros((4, 4), np.uint8)
    gt_b[:2, :2] = 3
    gt_b[3, 3] = 7                                           # all of them, and another class elsewhere
    gt_c = np.full((4, 4), 5, np.uint8)                      # the class is not in the image at all
    for name, gt in (('a', gt_a), ('b', gt_b), ('c', gt_c)):
        save_label_png(masks / f'{name}.png', mask)
        save_label_png(truth / f'{name}.png', gt)
    entries = [{'class': 2, 'source': name} for name in 'abc']
    figures = diagnostics.bank_figures(entries, masks, truth, num_classes=20)
    assert figures['objects'] == 3 and figures['classes_without_objects'] == 19
    assert figures['class_in_truth'] == pytest.approx(2 / 3)
    assert figures['pixel_precision'] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert figures['source_not_single_class'] == pytest.approx(2 / 3)     # b (class 7) and c (class 5)


def test_pair_figures_count_only_pairs_with_a_pasted_object(diagnostics):
    figures = diagnostics.pair_figures([3, -1, 5, 7], [1.0, 0.0, 0.2, 0.05])
    assert figures['pairs'] == 4 and figures['pasted'] == 0.75
    assert figures['mean_visible'] == pytest.approx((1.0 + 0.2 + 0.05) / 3)
    assert figures['visible_below_0.1'] == pytest.approx(1 / 3)
    assert figures['visible_below_0.25'] == pytest.approx(2 / 3)
    assert diagnostics.pair_figures([-1], [0.0])['mean_visible'] is None


def test_a_work_dir_without_a_cda_pass_is_one_line(diagnostics, tmp_path, capsys):
    assert diagnostics.main([str(tmp_path)]) == 2
    assert 'object_bank/index.json' in capsys.readouterr().err
