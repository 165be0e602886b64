"""progress.json (the heartbeat `slmjobs status` reads) and console lines for job logs.

progress.json is written by rank 0 only, atomically (tmp file + rename), every few seconds and at
every checkpoint, with exactly the fields of docs/CONTRACTS.md. The updates from inside the
training loop are trainer.callbacks.ProgressLogger's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

PROGRESS_FIELDS = (
    'run_name', 'state', 'link', 'step', 'max_steps', 'tokens_seen', 'loss', 'tokens_per_sec',
    'steps_per_sec', 'checkpoint_step', 'checkpoint_path', 'checkpoint_time', 'last_save_seconds',
    'link_started_at', 'first_step_at', 'deadline', 'wandb_id', 'updated_at')

# The run's last measured loss and speed, carried over from the previous link's heartbeat so
# that status is not blank while this link starts up. Display only: the checkpoint fields are
# never carried (the chain reads them, and a hard kill can leave them behind the checkpoints).
CARRIED_FIELDS = ('loss', 'tokens_per_sec', 'steps_per_sec')


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    tmp.write_text(json.dumps(data) + '\n')
    os.replace(tmp, path)


def say(message: str) -> None:
    """One line to stdout, flushed: job logs are read while the job runs."""
    print(f'[{time.strftime("%H:%M:%S")}] {message}', flush=True)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}h{m:02d}m' if h else (f'{m}m{s:02d}s' if m else f'{s}s')


class Progress:
    """The progress.json record; rank 0 writes it, other ranks keep it in memory only."""

    def __init__(self, path: Path, run_name: str, max_steps: int, deadline: Optional[float],
                 wandb_id: Optional[str], write: bool):
        link = os.environ.get('SLMJOBS_LINK')
        started = os.environ.get('SLMJOBS_JOB_START')
        self.path = path
        self.write_enabled = write
        self.data: dict[str, Any] = {key: None for key in PROGRESS_FIELDS}
        self.data.update(
            run_name=run_name, state='starting', link=int(link) if link else None,
            step=0, max_steps=max_steps, tokens_seen=0,
            link_started_at=float(started) if started else time.time(),
            deadline=deadline, wandb_id=wandb_id)
        self.data.update(_previous_measurements(path, run_name))
        self.last_write = 0.0
        # What the latest console line reported, for the metrics history (trainer/history.py)
        # to record as is: one place computes loss, lr and the windowed speeds.
        self.last_log: Optional[dict] = None   # training: step, tokens, loss, lr, ...
        self.last_eval: Optional[dict] = None  # validation: step, tokens, val_* metrics

    def update(self, **fields) -> None:
        unknown = set(fields) - set(PROGRESS_FIELDS)
        assert not unknown, f'not progress.json fields: {unknown}'
        self.data.update(fields)

    def write(self) -> None:
        if not self.write_enabled:
            return
        self.data['updated_at'] = time.time()
        write_json_atomic(self.path, self.data)
        self.last_write = time.time()

    def write_if_due(self, every_seconds: float) -> None:
        if time.time() - self.last_write >= every_seconds:
            self.write()


def _previous_measurements(path: Path, run_name: str) -> dict:
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(previous, dict) or previous.get('run_name') != run_name:
        return {}
    return {key: previous.get(key) for key in CARRIED_FIELDS}


def record_checkpoint(progress: Progress, step: int, path: str, seconds: float) -> None:
    """A checkpoint was written: progress.json says so at once (the chain reads it)."""
    progress.update(checkpoint_step=step, checkpoint_path=os.path.abspath(path) if path else None,
                    checkpoint_time=time.time(), last_save_seconds=round(seconds, 3))
    progress.write()
    if progress.write_enabled:
        say(f'checkpoint step {step} -> {path} ({seconds:.2f} s)')


def fail_line(exc: BaseException) -> str:
    return f'{type(exc).__name__}: {exc}'.splitlines()[0] if str(exc) else type(exc).__name__


def eprint(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
