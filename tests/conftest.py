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
    """Root of a tiny VOC2012-layout dataset (16 train + 8 val images, 64 px), made once per session."""
    from voc12.synthetic import generate

    return generate(tmp_path_factory.mktemp('synthetic_voc'), n_train=16, n_val=8, size=64, seed=0)
