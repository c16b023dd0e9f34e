"""misc.progress: bars on a terminal, one-line records in a log file, and --progress choosing."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from misc import progress
from step.registry import parse_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_mode():
    yield
    progress.configure('auto')


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_a_bar_on_a_terminal_and_log_lines_otherwise():
    progress.configure('auto')
    assert progress.resolved_mode(_Terminal()) == 'bar'
    assert progress.resolved_mode(io.StringIO()) == 'log'
    progress.configure('off')
    assert progress.resolved_mode(_Terminal()) == 'off'


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match='expected one of auto, bar, log, off'):
        progress.configure('fancy')


def test_log_mode_writes_records_and_no_frames(caplog, capsys):
    progress.configure('log', interval=0.0)
    with caplog.at_level(logging.INFO, logger='progress'):
        bar = progress.progress(range(5), desc='make_cam', unit='img')
        for _ in bar:
            bar.set_postfix(loss='0.5')
    records = [r.getMessage() for r in caplog.records if r.name == 'progress']
    assert records[-1].startswith('make_cam: 5/5 (100%)')
    assert 'loss=0.5' in records[-1]
    captured = capsys.readouterr()
    assert '\r' not in captured.err + captured.out


def test_log_mode_keeps_quiet_within_the_interval(caplog):
    progress.configure('log', interval=3600.0)
    with caplog.at_level(logging.INFO, logger='progress'):
        for _ in progress.progress(range(50), desc='inner', leave=False):
            pass
        for _ in progress.progress(range(50), desc='kept'):
            pass
    records = [r.getMessage() for r in caplog.records if r.name == 'progress']
    assert len(records) == 1 and records[0].startswith('kept: 50/50 (100%)')


def test_off_and_disabled_show_nothing(caplog, capsys):
    for mode in ('off', 'log', 'bar'):
        progress.configure(mode, interval=0.0)
        with caplog.at_level(logging.INFO, logger='progress'):
            assert sum(progress.progress(range(3), desc='x', disable=True)) == 3
    progress.configure('off')
    assert list(progress.progress([1, 2], desc='x')) == [1, 2]
    captured = capsys.readouterr()
    assert not caplog.records and captured.err == ''


def test_progress_flag():
    assert parse_config(['--progress', 'log']).progress == 'log'
    assert parse_config([]).progress == 'auto'
    with pytest.raises(SystemExit):
        parse_config(['--progress', 'sometimes'])


def test_a_step_run_into_a_file_writes_no_carriage_returns(tmp_path):
    """As in a SLURM log: stdout and stderr are files, so auto means one-line records."""
    work_dir = tmp_path / 'work'
    out, err = tmp_path / 'stdout.txt', tmp_path / 'stderr.txt'
    with out.open('w') as stdout, err.open('w') as stderr:
        code = subprocess.call([sys.executable, str(ROOT / 'run_sample.py'), '--profile', 'smoke',
                                '--work_dir', str(work_dir), '--steps', 'train_cam,make_cam', '--device', 'cpu'],
                               cwd=tmp_path, stdout=stdout, stderr=stderr,
                               env={**os.environ, 'OMP_NUM_THREADS': '1'})
    text = out.read_text() + err.read_text()
    assert code == 0, text[-2000:]
    assert '\r' not in text
    records = [line for line in out.read_text().splitlines() if re.match(r'make_cam\S*: \d+/\d+ \(100%\)', line)]
    assert records, text[-2000:]
