"""Progress bars that a log file can read.

On a terminal a tqdm bar redraws itself with carriage returns; in a SLURM log or `> run.log` those frames
pile up into one line of tens of kilobytes. `progress()` wraps tqdm and, per `--progress`:

    bar    tqdm's bar, as usual
    log    no bar: one log record (logger `progress`) at most every `interval` seconds, and one when a
           kept bar (leave=True) finishes: `make_cam: 120/400 (30%), 4.1 img/s, 0:29 elapsed, eta 1:08`
    off    nothing
    auto   bar when stderr (where tqdm draws) is a terminal, log otherwise (the default)

`configure(mode)` is called once by run_sample.py's logging setup; code that never calls it gets auto.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterable, Optional

from tqdm import tqdm

MODES = ('auto', 'bar', 'log', 'off')
DEFAULT_INTERVAL = 30.0   # seconds between two records of one loop in log mode

logger = logging.getLogger('progress')
_settings = {'mode': 'auto', 'interval': DEFAULT_INTERVAL}


def configure(mode: str = 'auto', interval: float = DEFAULT_INTERVAL) -> None:
    """Choose how every later `progress()` reports (one of MODES)."""
    if mode not in MODES:
        raise ValueError(f'progress mode {mode!r}: expected one of {", ".join(MODES)}')
    _settings.update(mode=mode, interval=float(interval))


def resolved_mode(stream: Any = None) -> str:
    """bar, log or off: auto decided by whether `stream` (default: sys.stderr) is a terminal."""
    mode = _settings['mode']
    if mode != 'auto':
        return mode
    stream = sys.stderr if stream is None else stream
    try:
        return 'bar' if stream.isatty() else 'log'
    except (AttributeError, ValueError):       # no isatty, or a closed stream
        return 'log'


class _NullFile:
    """Where a log-mode bar's own drawing goes (nowhere): tqdm writes '\\r' and '\\n' to its file."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class LogBar(tqdm):
    """tqdm that draws nothing and logs one line at most every `interval` seconds (and at the end when
    `leave`): the counts, rate, elapsed time and eta that tqdm measures, with its postfix (e.g. the loss)."""

    def __init__(self, *args, interval: float = DEFAULT_INTERVAL, **kwargs):
        self._interval = interval
        self._last_record = None
        kwargs.update(file=_NullFile(), mininterval=min(interval, kwargs.get('mininterval', 1.0)))
        super().__init__(*args, **kwargs)
        self._last_record = time.monotonic()       # the loop's start is no news

    def record(self) -> str:
        info = self.format_dict
        n, total, unit = info['n'], info['total'], info.get('unit') or 'it'
        parts = [f'{n}/{total} ({100 * n / total:.0f}%)' if total else f'{n}']
        rate = info.get('rate') or (n / info['elapsed'] if info['elapsed'] else None)
        if rate:
            parts.append(f'{rate:.3g} {unit}/s')
        parts.append(f'{self.format_interval(info["elapsed"])} elapsed')
        if total and rate and n < total:
            parts.append(f'eta {self.format_interval((total - n) / rate)}')
        if info.get('postfix'):
            parts.append(str(info['postfix']))
        return f'{info.get("prefix") or "progress"}: ' + ', '.join(parts)

    def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
        if self._last_record is None or self.disable:
            return True
        now = time.monotonic()
        if now - self._last_record >= self._interval:
            self._last_record = now
            logger.info(self.record())
        return True

    def close(self) -> None:
        if self.disable:
            return
        if self.leave and self._last_record is not None:
            logger.info(self.record())
            self._last_record = None               # tqdm's close displays once more: no second record
        super().close()


def progress(iterable: Optional[Iterable] = None, desc: Optional[str] = None, total: Optional[float] = None,
             disable: bool = False, **kwargs) -> tqdm:
    """`tqdm(iterable, desc=..., total=..., disable=..., **kwargs)` that reports as configured (see the
    module docstring). Returns the tqdm object, so `set_postfix` and `update` work in every mode."""
    mode = resolved_mode(kwargs.get('file'))
    if mode == 'log':
        kwargs.pop('file', None)
        return LogBar(iterable, desc=desc, total=total, disable=disable, interval=_settings['interval'], **kwargs)
    return tqdm(iterable, desc=desc, total=total, disable=disable or mode == 'off', **kwargs)
