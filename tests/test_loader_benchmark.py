"""benchmarks/training.py --loader, in its smallest form: it runs, prints one line per training dataset in the
form the docs quote, and finds every path's samples equal to today's (timings are not asserted: a shared
machine's are noise)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_loader_benchmark_prints_each_dataset_and_checks_its_samples():
    result = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'training.py'), '--loader',
                             '--loader-samples', '2', '--loader-rounds', '1'],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for name in ('cam', 'cda', 'irn', 'aff', 'seam', 'seg'):
        rows = [line for line in lines if line.startswith(f'{name} ') and ' per sample ' in line]
        assert len(rows) == 1, name
        assert re.search(r'today +\d+\.\d\d ms +new +\d+\.\d\d ms +\d+\.\d\dx', rows[0]), rows[0]
        checks = [line for line in lines if line.strip().startswith(f'{name} ') and 'compact:' in line]
        assert len(checks) == 1 and checks[0].count('2 samples bit-identical') == 2, checks
    assert any(line.startswith('target: each dataset at most 1/3') for line in lines)
