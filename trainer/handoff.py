"""Stop cleanly before the job's walltime: the deadline / signal hand-off.

On Grid Engine a job is SIGKILLed at h_rt with no warning, and soft limits send SIGUSR1/SIGUSR2
to the whole process group. So the worker knows its deadline (SLMJOBS_DEADLINE, epoch seconds)
and, at every batch boundary, asks: would one more batch plus the checkpoint save (plus an
evaluation, if that batch would trigger one) plus the process exit still finish before the
deadline? If not -- or if
SIGUSR1, SIGUSR2 or SIGTERM arrived -- all ranks agree (a one-element all-reduce), training
stops at this batch, Composer's CheckpointSaver writes the checkpoint for this step, and the
process exits 75 ("handed off, more to do").

The signals only set a flag (acting inside a handler, or on one rank only, is fragile: see
submitit/Lightning), and Composer's own SIGTERM handler, which exits without a checkpoint, never
runs (see install_signal_handlers).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from typing import Optional

HANDOFF_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
# After the stop checkpoint: Trainer.close() (wandb finishes its files), a barrier, atexit
# clean-up (streaming unlinks its shared memory). Measured 0.5-1.5 s on a loaded 2-core machine.
EXIT_SECONDS = 2.0


class StopRequest:
    """Process-wide: the first stop signal received (None if none)."""
    signum: Optional[int] = None
    received_at: Optional[float] = None


def _on_signal(signum, frame) -> None:
    if StopRequest.signum is None:
        StopRequest.signum = signum
        StopRequest.received_at = time.time()
        print(f'received {signal.Signals(signum).name}: handing off at the next batch boundary',
              flush=True)


def _wait_for_signals() -> None:
    while True:
        _on_signal(signal.sigwait(HANDOFF_SIGNALS), None)


_watcher: Optional[threading.Thread] = None


def install_signal_handlers() -> None:
    """Block the hand-off signals in this process and take them with sigwait() in a thread.

    Call first thing in main(), before any thread exists: the mask is inherited by every thread
    and by every child process, also across exec. That matters because SGE signals the whole
    process group: a Python handler is reset to the default action on exec, so helper processes
    (multiprocessing's resource tracker, wandb's service, compile workers) would otherwise be
    killed by SIGUSR1/SIGTERM. Blocked, the signal just stays pending in them. It also makes
    Composer's SIGTERM handler (exit without a checkpoint) unreachable.
    """
    global _watcher
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDOFF_SIGNALS)
    if _watcher is None:
        _watcher = threading.Thread(target=_wait_for_signals, name='handoff-signals', daemon=True)
        _watcher.start()


def ignore_signals_for_exit() -> None:
    """Right before exiting: SIG_IGN survives interpreter shutdown (Python restores SIG_DFL for
    its own handlers there), so a late SIGTERM from the `composer` launcher, which terminates the
    other ranks as soon as one exits non-zero, cannot turn an agreed 75 into a signal death."""
    for sig in HANDOFF_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def deadline_from_env() -> Optional[float]:
    value = os.environ.get('SLMJOBS_DEADLINE')
    return float(value) if value else None


def make_handoff_callback(deadline: Optional[float], save_seconds_guess: float,
                          eval_every: int, eval_seconds_guess_per_batch: float):
    """Built in a function so that importing this module does not import Composer."""
    import torch
    from composer.core import Callback, State
    from composer.loggers import Logger
    from composer.utils import dist

    class HandOff(Callback):
        """Decides at every BATCH_END whether to stop; measures batch, save and eval times.

        Must be registered before Composer's CheckpointSaver (user callbacks are), with
        `SaveTimer` (below) after it, so that BATCH_END -> BATCH_CHECKPOINT brackets the save.
        """

        def __init__(self):
            self.deadline = deadline
            self.batch_seconds: deque[float] = deque(maxlen=5)
            self.save_seconds: list[float] = []
            self.eval_seconds: list[float] = []
            self.save_seconds_guess = save_seconds_guess
            self.eval_every = eval_every
            self.max_steps = 0
            self.stopped_early = False
            self.reason = ''
            self._mark = time.time()  # end of the previous batch's checkpoint phase
            self._eval_started = 0.0

        # -- timing ---------------------------------------------------------------------------

        def fit_start(self, state: State, logger: Logger) -> None:
            self.max_steps = int(state.max_duration.value)
            self._mark = time.time()

        def after_checkpoint_phase(self, save_seconds: Optional[float]) -> None:
            """Called by SaveTimer once the CheckpointSaver has run for this batch."""
            if save_seconds is not None:
                self.save_seconds.append(save_seconds)
            self._mark = time.time()

        def eval_start(self, state: State, logger: Logger) -> None:
            self._eval_started = time.time()

        def eval_end(self, state: State, logger: Logger) -> None:
            self.eval_seconds.append(time.time() - self._eval_started)

        def estimate_save(self) -> float:
            return max(self.save_seconds) if self.save_seconds else self.save_seconds_guess

        def estimate_batch(self) -> float:
            return max(self.batch_seconds) if self.batch_seconds else 0.0

        def estimate_eval(self) -> float:
            if self.eval_seconds:
                return max(self.eval_seconds)
            return eval_seconds_guess_per_batch * self.estimate_batch()

        def _next_batch_evaluates(self, step: int) -> bool:
            nxt = step + 1
            return nxt == self.max_steps or (self.eval_every > 0 and nxt % self.eval_every == 0)

        # -- the decision ---------------------------------------------------------------------

        def batch_end(self, state: State, logger: Logger) -> None:
            now = time.time()
            self.batch_seconds.append(now - self._mark)
            step = int(state.timestamp.batch)
            local_reason = ''
            if StopRequest.signum is not None:
                local_reason = f'signal {signal.Signals(StopRequest.signum).name}'
            elif self.deadline is not None:
                needed = self.estimate_batch() + 1.25 * self.estimate_save() + EXIT_SECONDS
                if self._next_batch_evaluates(step):
                    needed += self.estimate_eval()
                if now + needed > self.deadline:
                    local_reason = (f'deadline in {self.deadline - now:.1f} s < next batch '
                                    f'{self.estimate_batch():.2f} s + save {self.estimate_save():.2f} s'
                                    f' + exit {EXIT_SECONDS:.1f} s'
                                    + (f' + eval {self.estimate_eval():.2f} s'
                                       if self._next_batch_evaluates(step) else ''))
            flag = torch.tensor([1 if local_reason else 0], dtype=torch.int32)
            flag = state.device.tensor_to_device(flag)
            dist.all_reduce(flag, reduce_operation='MAX')  # every rank stops at the same step
            if int(flag.item()) and step < self.max_steps:
                self.stopped_early = True
                self.reason = local_reason or 'another rank asked to stop'
                state.stop_training()  # CheckpointSaver saves at this BATCH_CHECKPOINT

    return HandOff()


def make_save_timer(handoff, on_saved):
    """Registered after Composer's CheckpointSaver: measures the save and reports it."""
    from composer.core import Callback, State
    from composer.loggers import Logger

    class SaveTimer(Callback):

        def __init__(self):
            self.saver = None
            self._started = 0.0

        def batch_end(self, state: State, logger: Logger) -> None:
            self._started = time.time()  # evaluation (if any) runs between here and the save

        def eval_end(self, state: State, logger: Logger) -> None:
            self._started = time.time()

        def batch_checkpoint(self, state: State, logger: Logger) -> None:
            saver = self.saver
            saved = saver is not None and saver.last_checkpoint_batch == state.timestamp.batch
            seconds = time.time() - self._started if saved else None
            handoff.after_checkpoint_phase(seconds)
            if saved:
                on_saved(state, saver.saved_checkpoints[-1] if saver.saved_checkpoints else '', seconds)

    return SaveTimer()
