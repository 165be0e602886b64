"""metrics.jsonl: the run's metrics, every logged step and every evaluation, across all links.

Rank 0 appends one JSON object per line, in the order things happen (schema, and which record
counts when a hard kill made steps be trained twice: docs/CONTRACTS.md):

    {"event": "start", "link": 2, "step": 70, "tokens": 17920, "train_seconds": 41.2, "time": ...}
    {"event": "train", "link": 2, "step": 80, "tokens": 20480, "loss": 2.91, "bits_per_byte": 4.2,
     "lr": 0.0005, "tokens_per_sec": 10240.0, "steps_per_sec": 2.5, "train_seconds": 45.0, "time": ...}
    {"event": "eval", "link": 2, "step": 100, "tokens": 25600, "val_loss": 2.88, "val_accuracy": 0.41,
     "val_perplexity": 17.8, "val_bits_per_byte": 4.15, "train_seconds": 52.1, "time": ...}

The figures are the ones the console line reports: trainer/progress.py computes them once
(Progress.last_log, Progress.last_eval) and this callback records each new one. `train_seconds`
is Composer's training wall clock (state.timestamp.total_wct, restored from the checkpoint):
queue waits, start-up and evaluations are not in it.

Each record is one write() on a descriptor opened with O_APPEND. A link killed mid-write can
leave a torn last line; the next link ends it with a newline before its first record, and
readers skip lines that are not JSON. A history that cannot be written (full disk) never stops
training: the link says so once and records nothing more.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from composer.core import Callback, State
from composer.loggers import Logger

from trainer.progress import Progress, say

HISTORY_NAME = 'metrics.jsonl'


def open_for_append(path: Path) -> int:
    """The history's descriptor, positioned after a complete line."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b'\n':
        os.write(fd, b'\n')  # close a torn line left by a killed link
    return fd


class MetricsHistory(Callback):
    """Appends to <run_dir>/metrics.jsonl what the progress callback has just logged."""

    def __init__(self, path: Path, progress: Progress):
        self.path = Path(path)
        self.progress = progress
        self.fd: Optional[int] = None
        self.recorded_train: Optional[dict] = None  # the figures last written, to write each once
        self.recorded_eval: Optional[dict] = None

    def fit_start(self, state: State, logger: Logger) -> None:
        if self.progress.write_enabled:  # rank 0 only
            try:
                self.fd = open_for_append(self.path)
            except OSError as e:
                say(f'metrics history: cannot open {self.path} ({e}); not recorded in this link')
                return
            self._append('start', state, {'step': int(state.timestamp.batch),
                                          'tokens': int(state.timestamp.token)})

    def batch_end(self, state: State, logger: Logger) -> None:
        self._record_new(state)

    def eval_end(self, state: State, logger: Logger) -> None:
        self._record_new(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._record_new(state)

    def close(self, state: State, logger: Logger) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _record_new(self, state: State) -> None:
        if self.progress.last_log is not self.recorded_train:
            self.recorded_train = self.progress.last_log
            self._append('train', state, self.recorded_train)
        if self.progress.last_eval is not self.recorded_eval:
            self.recorded_eval = self.progress.last_eval
            self._append('eval', state, self.recorded_eval)

    def record(self, kind: str, state: State, figures: dict) -> None:
        """A record another callback computed (HellaSwag scores), as its own event."""
        self._append(kind, state, figures)

    def _append(self, kind: str, state: State, figures: dict) -> None:
        if self.fd is None:
            return
        record = {'event': kind, 'link': self.progress.data['link'], **figures,
                  'train_seconds': round(state.timestamp.total_wct.total_seconds(), 3),
                  'time': round(time.time(), 3)}
        try:
            os.write(self.fd, (json.dumps(record, separators=(',', ':')) + '\n').encode())
        except OSError as e:
            say(f'metrics history: cannot write {self.path} ({e}); not recorded for the rest of this link')
            self.close(state, None)
