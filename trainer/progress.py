"""progress.json (the heartbeat `slmjobs status` reads) and console lines for job logs.

progress.json is written by rank 0 only, atomically (tmp file + rename), every few seconds and at
every checkpoint, with exactly the fields of docs/CONTRACTS.md.
"""

from __future__ import annotations

import json
import math
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


def make_progress_callback(progress: Progress, log_every: int, progress_every_seconds: float,
                           bytes_per_token: float, batch_sleep: float, train_dataset=None):
    """Console lines and progress.json updates from inside the Composer loop."""
    from composer.core import Callback, State
    from composer.loggers import Logger

    class ProgressLogger(Callback):

        def __init__(self):
            self.window_start: Optional[tuple[float, int, int]] = None  # (time, step, tokens)
            self.first_batch_pending = True
            self.rank_zero = progress.write_enabled

        def _log(self, message: str) -> None:
            if self.rank_zero:
                say(message)

        def fit_start(self, state: State, logger: Logger) -> None:
            step = int(state.timestamp.batch)
            if step > 0:
                latest = progress.path.parent / 'checkpoints' / 'latest-rank0.pt'
                path = os.path.realpath(latest) if latest.exists() else None
                progress.update(checkpoint_step=step, checkpoint_path=path,
                                checkpoint_time=os.path.getmtime(path) if path else None)
                self._log(f'resumed from {path} at step {step}/{progress.data["max_steps"]}')
            progress.update(state='training', step=step, tokens_seen=int(state.timestamp.token))
            progress.write()
            self.window_start = (time.time(), step, int(state.timestamp.token))

        def batch_start(self, state: State, logger: Logger) -> None:
            if self.first_batch_pending and train_dataset is not None:
                self.first_batch_pending = False
                fetched = getattr(train_dataset, 'samples_fetched', None)
                if fetched is not None and fetched >= 0:
                    self._log(f'data: {fetched} samples read to start this link at step '
                              f'{int(state.timestamp.batch)} (no replay of earlier batches)')

        def batch_end(self, state: State, logger: Logger) -> None:
            if batch_sleep > 0:
                time.sleep(batch_sleep)  # testing aid, see train.debug_batch_sleep
            now = time.time()
            step = int(state.timestamp.batch)
            tokens = int(state.timestamp.token)
            if progress.data['first_step_at'] is None:
                progress.update(first_step_at=now)
            t0, step0, tokens0 = self.window_start
            elapsed = max(now - t0, 1e-9)
            progress.update(step=step, tokens_seen=tokens)
            if step % log_every == 0 or step == progress.data['max_steps']:
                loss = float(state.loss.item()) if hasattr(state.loss, 'item') else float('nan')
                steps_per_sec = (step - step0) / elapsed
                tokens_per_sec = (tokens - tokens0) / elapsed
                progress.update(loss=loss, steps_per_sec=round(steps_per_sec, 4),
                                tokens_per_sec=round(tokens_per_sec, 1))
                self.window_start = (now, step, tokens)
                max_steps = progress.data['max_steps']
                eta = (max_steps - step) / steps_per_sec if steps_per_sec > 0 else math.inf
                lr = state.schedulers[0].get_last_lr()[0] if state.schedulers else float('nan')
                self._log(f'step {step}/{max_steps} | loss {loss:.4f} | '
                          f'bpb {loss / math.log(2) / bytes_per_token:.3f} | lr {lr:.2e} | '
                          f'{tokens_per_sec:,.0f} tok/s | {steps_per_sec:.2f} step/s | '
                          f'eta {format_duration(eta) if eta != math.inf else "?"}')
            progress.write_if_due(progress_every_seconds)

        def eval_end(self, state: State, logger: Logger) -> None:
            values = {name: float(metric.compute()) for name, metric in state.eval_metrics.get('val', {}).items()}
            if values:
                self._log(f'eval step {int(state.timestamp.batch)} | val loss {values["loss"]:.4f} | '
                          f'ppl {values["perplexity"]:.2f} | bpb {values["bits_per_byte"]:.3f} | '
                          f'acc {values["accuracy"]:.3f}')

    return ProgressLogger()


def on_checkpoint_saved(progress: Progress):
    def record(state, path: str, seconds: float) -> None:
        step = int(state.timestamp.batch)
        progress.update(checkpoint_step=step, checkpoint_path=os.path.abspath(path) if path else None,
                        checkpoint_time=time.time(), last_save_seconds=round(seconds, 3))
        progress.write()
        if progress.write_enabled:
            say(f'checkpoint step {step} -> {path} ({seconds:.2f} s)')
    return record


def fail_line(exc: BaseException) -> str:
    return f'{type(exc).__name__}: {exc}'.splitlines()[0] if str(exc) else type(exc).__name__


def eprint(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
