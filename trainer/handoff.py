"""Stop cleanly before the job's walltime: the deadline and the signals (no Composer here).

On Grid Engine a job is SIGKILLed at h_rt with no warning, and soft limits send SIGUSR1/SIGUSR2
to the whole process group. So the worker knows its deadline (SLMJOBS_DEADLINE, epoch seconds)
and, at every batch boundary, trainer.callbacks.HandOff asks whether one more batch, the
checkpoint save and the exit still fit before it. If not -- or if SIGUSR1, SIGUSR2 or SIGTERM
arrived -- all ranks stop at that batch, a checkpoint is written for it, and the process exits
75 ("handed off, more to do").

The signals only set a flag (acting inside a handler, or on one rank only, is fragile: see
submitit/Lightning), and Composer's own SIGTERM handler, which exits without a checkpoint, never
runs (see install_signal_handlers).
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Optional

from slmjobs import link

HANDOFF_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
# After the stop checkpoint: Trainer.close() (wandb finishes its files), a barrier, atexit
# clean-up (streaming unlinks its shared memory). Measured 0.5-1.5 s on a loaded 2-core machine.
# One value for every command that rides the chain (slmjobs.link, the contract's one
# implementation: the only module of slmjobs the worker imports).
EXIT_SECONDS = link.EXIT_SECONDS


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


def take_python_handlers() -> None:
    """Point the Python-level handlers of the hand-off signals at the stop flag. Call in the main
    thread once Composer is imported: its engine module sets a SIGTERM handler that exits 143
    without a checkpoint, and a thread that a native library started with its own signal mask can
    still take a process-directed SIGTERM, which Python then hands to that handler (measured:
    SIGTERM to the worker, as SLURM sends at --time, ended it 143 mid-training). Whichever
    thread takes a signal, it now only asks for a hand-off."""
    for sig in HANDOFF_SIGNALS:
        signal.signal(sig, _on_signal)


def ignore_signals_for_exit() -> None:
    """Right before exiting: SIG_IGN survives interpreter shutdown (Python restores SIG_DFL for
    its own handlers there), so a late SIGTERM from the `composer` launcher, which terminates the
    other ranks as soon as one exits non-zero, cannot turn an agreed 75 into a signal death."""
    for sig in HANDOFF_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def deadline_from_env() -> Optional[float]:
    return link.deadline()
