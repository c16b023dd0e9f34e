"""Shared pytest fixtures: the project root on sys.path and one tiny synthetic VOC per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so `import voc12`, `import misc` work without installing the project


@pytest.fixture(scope='session')
def synthetic_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny VOC2012-layout dataset (16 train + 8 val images, 64 px, and 4 images of the
    context-shift split), made once per session."""
    from voc12.synthetic import generate

    return generate(tmp_path_factory.mktemp('synthetic_voc'), n_train=16, n_val=8, size=64, seed=0, n_shift=4)


@pytest.fixture(scope='session')
def smoke_run(synthetic_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """work_dir of one finished smoke run of every step, baseline and CDA (tests that change it copy it)."""
    import run_sample
    work_dir = tmp_path_factory.mktemp('smoke_run')
    # Ground-truth masks as the object bank source: the smoke run's own pseudo masks come from one
    # epoch of training and rarely hold a single clean class, which the bank filter requires.
    code = run_sample.main(['--profile', 'smoke', '--voc12_root', str(synthetic_voc), '--work_dir', str(work_dir),
                            '--cda', '--cda_bank_source', str(synthetic_voc / 'SegmentationClass'),
                            '--sweep', '0.3', '0.5', '0.7'])
    assert code == 0
    return work_dir
