"""The context-shift evaluation: the CAM leakage measure, its usual/foreign split, the shift split's CAMs
and figures in eval_cam.json, summary.json and report.md, and silence where scene labels are absent."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from misc import metrics
from step.registry import parse_config
from step.report import _pass_figures, summary_table
from voc12 import dataloader
from voc12.classes import IGNORE
from voc12.synthetic import SCENES, USUAL_SCENE

CONTEXT_KEYS = ('cam_miou_shift', 'leakage_usual', 'leakage_foreign', 'leakage_shift')
USUAL = [USUAL_SCENE[c] for c in range(20)]


def _gt() -> np.ndarray:
    """8 x 8 labels: background on the left half, class 1 (index 0) on the right, an ignore column between."""
    gt = np.zeros((8, 8), np.uint8)
    gt[:, 4:] = 1
    gt[:, 3] = IGNORE
    return gt


# ----------------------------------------------------------------------------- the measure on hand-made CAMs

def test_leakage_all_on_background_is_one_all_on_object_is_zero() -> None:
    gt = _gt()
    on_background = (gt == 0).astype(np.float32)
    on_object = (gt == 1).astype(np.float32)
    assert metrics.cam_leakage(np.stack([on_background, on_object]), gt).tolist() == [1.0, 0.0]


def test_leakage_is_the_share_of_mass_and_ignores_the_band() -> None:
    gt = _gt()
    cam = np.zeros((1, 8, 8), np.float32)
    cam[0, :, 0] = 0.5          # 8 px x 0.5 = 4 on background
    cam[0, :, 5] = 1.0          # 8 on the object
    cam[0, :, 3] = 1.0          # on the ignore band: counted nowhere
    assert metrics.cam_leakage(cam, gt)[0] == pytest.approx(4 / 12)
    band_only = np.zeros((1, 8, 8), np.float32)
    band_only[0, :, 3] = 1.0
    assert np.isnan(metrics.cam_leakage(band_only, gt)[0])      # no mass outside the band: undefined
    negative = -np.ones((1, 8, 8), np.float32)                  # SEAM's near-zero negatives are no mass
    negative[0, :, 6] = 1.0
    assert metrics.cam_leakage(negative, gt)[0] == 0.0


def test_leakage_rejects_a_size_mismatch() -> None:
    with pytest.raises(ValueError, match='differ in size'):
        metrics.cam_leakage(np.zeros((1, 4, 4)), np.zeros((8, 8), np.uint8))


def test_context_leakage_splits_usual_from_foreign_scenes() -> None:
    gt = np.zeros((8, 8), np.uint8)
    gt[:, 4:] = 1
    sky_class, road_class = USUAL.index('sky'), USUAL.index('road')
    half = np.ones((8, 8), np.float32)                         # half its mass on background: 0.5
    on_background = (gt == 0).astype(np.float32)               # 1.0
    meter = metrics.ContextLeakage({'a': 'sky', 'b': 'road'}, USUAL)
    meter.update('a', np.stack([half, on_background]), [sky_class, road_class], gt)   # usual 0.5, foreign 1.0
    meter.update('b', half[None], [sky_class], gt)                                    # foreign 0.5
    found = meter.compute()
    assert found['usual'] == pytest.approx(0.5) and found['pairs_usual'] == 1
    assert found['foreign'] == pytest.approx(0.75) and found['pairs_foreign'] == 2
    assert found['all'] == pytest.approx(2 / 3)
    empty = metrics.ContextLeakage({}, USUAL).compute()
    assert empty['usual'] is None and empty['foreign'] is None and empty['all'] is None


# ----------------------------------------------------------------------------- dataset side

def test_shift_split_name_and_its_labels(synthetic_voc: Path, tmp_path: Path) -> None:
    shift = dataloader.resolve_list('shift', 'train', synthetic_voc)
    assert shift == dataloader.shift_ids(synthetic_voc) and len(shift) == 4
    labels = dataloader.load_image_labels(synthetic_voc, shift, tmp_path)
    for image_id in shift:
        mask = np.asarray(Image.open(synthetic_voc / 'SegmentationClass' / f'{image_id}.png'))
        assert set(np.nonzero(labels[image_id])[0] + 1) == set(np.unique(mask)) - {0, IGNORE}
    scenes, usual = dataloader.load_scenes(synthetic_voc)
    assert usual == USUAL and set(shift) <= set(scenes) and set(scenes.values()) <= set(SCENES)


def test_no_scene_labels_no_shift_split(tmp_path: Path) -> None:
    (tmp_path / 'ImageSets' / 'Segmentation').mkdir(parents=True)
    assert dataloader.shift_ids(tmp_path) == [] and dataloader.load_scenes(tmp_path) is None
    with pytest.raises(dataloader.BadInputError, match='context-shift'):
        dataloader.resolve_list('shift', 'train', tmp_path)


def test_config_n_shift_per_profile() -> None:
    assert parse_config(['--profile', 'demo']).synthetic_n_shift == 50            # IRNet's demo (methods/irn.py)
    assert parse_config(['--profile', 'demo', '--method', 'affinitynet']).synthetic_n_shift == 100
    assert parse_config(['--profile', 'demo', '--dataset', 'coco14']).synthetic_n_shift == 0
    assert parse_config(['--profile', 'smoke']).synthetic_n_shift == 4
    assert parse_config(['--profile', 'paper']).synthetic_n_shift == 0
    assert parse_config(['--profile', 'smoke', '--n_shift', '7']).synthetic_n_shift == 7
    assert parse_config(['--synthetic_n_shift', '0']).synthetic_n_shift == 0
    with pytest.raises(SystemExit):
        parse_config(['--n_shift', '-1'])


# ----------------------------------------------------------------------------- the smoke run

def test_make_cam_writes_the_shift_split_in_both_passes(smoke_run: Path, synthetic_voc: Path) -> None:
    for cam_dir in (smoke_run / 'cam', smoke_run / 'cda' / 'cam'):
        for image_id in dataloader.shift_ids(synthetic_voc):
            with np.load(cam_dir / f'{image_id}.npz') as cam:
                assert cam['high_res'].shape[1:] == (64, 64) and len(cam['keys'])


def test_smoke_run_reports_the_context_figures(smoke_run: Path) -> None:
    """The keys exist after a real run (one epoch from scratch may leave the CAMs empty, so leakage,
    undefined for a map without mass, may be None)."""
    for metrics_dir in (smoke_run / 'metrics', smoke_run / 'cda' / 'metrics'):
        result = json.loads((metrics_dir / 'eval_cam.json').read_text())
        for key in ('leakage_usual', 'leakage_foreign'):
            assert result[key] is None or 0 <= result[key] <= 1
        assert result['leakage_pairs_usual'] >= 0 and result['leakage_pairs_foreign'] >= 0
        shift = result['shift']
        assert shift['images'] == 4 and 0 <= shift['miou'] <= 1 and len(shift['iou']) == 21
        assert shift['leakage'] is None or 0 <= shift['leakage'] <= 1
    summary = json.loads((smoke_run / 'metrics' / 'summary.json').read_text())
    for stage in ('baseline', 'cda'):
        assert set(CONTEXT_KEYS) <= set(summary[stage]) and summary[stage]['cam_miou_shift'] is not None
    assert 'CAM mIoU, context-shift split' in (smoke_run / 'metrics' / 'summary.md').read_text()


@pytest.fixture(scope='module')
def handmade_run(synthetic_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work dir whose CAMs are made by hand from the ground truth, evaluated and reported: the baseline's
    CAMs cover the whole image (leakage = the background's share of the non-ignore pixels), the CDA
    pass's cover exactly their objects (leakage 0, and mIoU 1 at any threshold below 1)."""
    from misc.config import with_stage
    from misc.imutils import save_npz
    from step.report import write_report, write_summary
    from step import eval_cam
    work = tmp_path_factory.mktemp('handmade')
    cfg = parse_config(['--profile', 'smoke', '--voc12_root', str(synthetic_voc), '--work_dir', str(work)])
    ids = dataloader.resolve_list('train', 'train', synthetic_voc) + dataloader.shift_ids(synthetic_voc)
    for stage in ('', 'cda'):
        stage_cfg = with_stage(cfg, stage)
        for image_id in ids:
            gt = dataloader.load_gt_mask(synthetic_voc, image_id)
            keys = np.array(sorted(set(np.unique(gt).tolist()) - {0, IGNORE}), np.int64) - 1
            cams = np.stack([(gt == k + 1) if stage else np.ones_like(gt, bool) for k in keys]).astype(np.float32)
            save_npz(stage_cfg.cam_dir / f'{image_id}.npz', keys=keys, cam=cams[:, ::4, ::4], high_res=cams)
        eval_cam.run(stage_cfg)
    write_summary(cfg, {})
    write_report(cfg)
    return work


def _background_share(voc: Path, ids: list[str]) -> float:
    """The baseline's expected leakage: per image, background pixels / non-ignore pixels, per class pair."""
    values = []
    for image_id in ids:
        gt = dataloader.load_gt_mask(voc, image_id)
        share = (gt == 0).sum() / (gt != IGNORE).sum()
        values += [share] * len(set(np.unique(gt).tolist()) - {0, IGNORE})
    return float(np.mean(values))


def test_eval_cam_leakage_and_shift_figures_on_handmade_cams(handmade_run: Path, synthetic_voc: Path) -> None:
    base = json.loads((handmade_run / 'metrics' / 'eval_cam.json').read_text())
    cda = json.loads((handmade_run / 'cda' / 'metrics' / 'eval_cam.json').read_text())
    shift = dataloader.shift_ids(synthetic_voc)
    assert base['shift']['leakage'] == pytest.approx(_background_share(synthetic_voc, shift))
    assert cda['shift']['leakage'] == 0 and cda['leakage_usual'] == 0
    assert cda['shift']['miou'] == pytest.approx(1.0) and cda['shift']['images'] == 4
    # The eval set (train) split by context: the pair counts are those of the scene files.
    scenes, usual = dataloader.load_scenes(synthetic_voc)
    pairs = {'usual': 0, 'foreign': 0}
    for image_id in dataloader.resolve_list('train', 'train', synthetic_voc):
        gt = dataloader.load_gt_mask(synthetic_voc, image_id)
        for value in set(np.unique(gt).tolist()) - {0, IGNORE}:
            pairs['usual' if usual[value - 1] == scenes[image_id] else 'foreign'] += 1
    assert pairs['usual'] and pairs['foreign']
    for result in (base, cda):
        assert (result['leakage_pairs_usual'], result['leakage_pairs_foreign']) == (pairs['usual'], pairs['foreign'])
    assert 0 < base['leakage_usual'] < 1 and 0 < base['leakage_foreign'] < 1


def test_summary_and_report_carry_the_context_figures(handmade_run: Path, synthetic_voc: Path) -> None:
    from step.report import image_leakage
    summary = json.loads((handmade_run / 'metrics' / 'summary.json').read_text())
    for stage in ('baseline', 'cda'):
        assert all(summary[stage][key] is not None for key in CONTEXT_KEYS)
    assert summary['cda']['leakage_shift'] == 0 < summary['baseline']['leakage_shift']
    table = (handmade_run / 'metrics' / 'summary.md').read_text()
    for title in ('CAM mIoU, context-shift split', 'CAM leakage, usual scene (lower is better)',
                  'CAM leakage, foreign scene (lower is better)', 'CAM leakage, context-shift split (lower is better)'):
        assert f'| {title} |' in table
    report = (handmade_run / 'report.md').read_text()
    assert 'The last 3 rows are context-shift images' in report
    with Image.open(handmade_run / 'contact_sheet.png') as sheet:
        # 6 eval images x (baseline, CDA) rows, then 3 context-shift rows, 128 px each
        assert sheet.size == (5 * 128, (6 * 2 + 3) * 128)
        sheet = np.asarray(sheet)
    # The shift rows are the images with the highest baseline leakage.
    leak = {i: image_leakage(handmade_run / 'cam' / f'{i}.npz', synthetic_voc / 'SegmentationClass' / f'{i}.png')
            for i in dataloader.shift_ids(synthetic_voc)}
    top = sorted(leak, key=lambda i: -leak[i])[:3]
    for row, image_id in enumerate(top):
        with Image.open(synthetic_voc / 'JPEGImages' / f'{image_id}.jpg') as jpg:
            image = np.asarray(jpg.resize((128, 128), Image.NEAREST))
        tile = sheet[(12 + row) * 128:(13 + row) * 128, :128]
        assert np.abs(tile[20:].astype(int) - image[20:].astype(int)).mean() < 3    # below the caption


def test_summary_keys_without_scene_labels(tmp_path: Path) -> None:
    cfg = parse_config(['--profile', 'smoke', '--work_dir', str(tmp_path)])
    cfg.metrics_dir.mkdir(parents=True)
    (cfg.metrics_dir / 'eval_cam.json').write_text(json.dumps({'miou': 0.5}))
    figures = _pass_figures(cfg, [])
    assert all(figures[key] is None for key in CONTEXT_KEYS)
    assert 'leakage' not in summary_table(figures, {})          # rows only where a figure exists


def test_eval_cam_is_silent_without_scene_labels(smoke_run: Path, synthetic_voc: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A VOC-like dataset (no scenes.json / usual_scenes.json): no context keys, nothing logged about them."""
    from step import eval_cam
    voc = tmp_path / 'voc'
    shutil.copytree(synthetic_voc, voc)
    for name in ('scenes.json', 'usual_scenes.json'):
        (voc / name).unlink()
    work = tmp_path / 'work'
    shutil.copytree(smoke_run / 'cam', work / 'cam')
    cfg = parse_config(['--profile', 'smoke', '--voc12_root', str(voc), '--work_dir', str(work)])
    with caplog.at_level(logging.INFO):
        result = eval_cam.run(cfg)
    stored = json.loads((cfg.metrics_dir / 'eval_cam.json').read_text())
    for found in (result, stored):
        assert not {k for k in found if k.startswith('leakage')} and 'shift' not in found
        assert 0 <= found['miou'] <= 1
    assert 'leakage' not in caplog.text and 'shift' not in caplog.text


def test_eval_set_shift(handmade_run: Path, synthetic_voc: Path, tmp_path: Path) -> None:
    """--eval_set shift: eval_cam scores the shift split itself; every pair there is a foreign-scene one."""
    from step import eval_cam
    work = tmp_path / 'work'
    shutil.copytree(handmade_run / 'cam', work / 'cam')
    cfg = parse_config(['--profile', 'smoke', '--voc12_root', str(synthetic_voc), '--work_dir', str(work),
                        '--eval_set', 'shift'])
    result = eval_cam.run(cfg)
    expected = json.loads((handmade_run / 'metrics' / 'eval_cam.json').read_text())['shift']
    assert result['images'] == 4 and result['miou'] == pytest.approx(expected['miou'])
    assert result['leakage_pairs_usual'] == 0 and result['leakage_usual'] is None
    assert result['leakage_foreign'] == pytest.approx(expected['leakage'])
    assert result['shift']['leakage'] == pytest.approx(expected['leakage'])
