"""The contract a link gives any command, for commands written in Python (docs/CONTRACTS.md,
"Any command"). Standard library only (tests/test_structure.py holds it to that): a training
script imports it without pulling in slmjobs' launcher, and torch only when the script already
has it.

    from slmjobs import link

    handoff = link.HandOff()                  # SLMJOBS_DEADLINE; SIGUSR1/USR2/TERM set its flag
    state = load(link.resume_from())         # the checkpoint declared last, or None
    while step < total:
        if handoff.time_to_stop():           # one more step + a save + the exit still fit?
            break
        loss = train_one_step(); step += 1
        link.heartbeat(step, total, loss)    # what `slmjobs status` shows
    with handoff.saving():                   # measured: the next link budgets for it
        save(path)
    link.checkpoint_done(path, step)         # atomically: a torn save is never resumed from
    sys.exit(link.exit_status(finished=step >= total))

Outside slmjobs (no SLMJOBS_* variables) the same script runs to the end: no deadline, nothing
declared, nothing written.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

FINISHED, BAD_INPUT, HANDED_OFF = 0, 2, 75
DECLARATION_FILE = "checkpoint.json"   # in SLMJOBS_RUN_DIR: the newest complete checkpoint
HEARTBEAT_FILE = "progress.json"       # in SLMJOBS_RUN_DIR: step, total, loss (status reads it)
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
# After the stop checkpoint the process still has to exit (interpreter shutdown, a logger's
# files): what the decision keeps free of it, as the trainer does (trainer/handoff.py).
EXIT_SECONDS = 2.0
# A save is timed once per link at most; the first guess until then (seconds).
SAVE_SECONDS_GUESS = 5.0


# ------------------------------------------------------------------ the contract's variables
def deadline() -> float | None:
    """Epoch seconds by which the command should have saved and exited (None: no deadline)."""
    value = os.environ.get("SLMJOBS_DEADLINE")
    return float(value) if value else None


def resume_from() -> str | None:
    """The checkpoint to continue from: what the command declared last (or the newest file
    matching the run's --resume-glob); None on the first link or when there is none."""
    return os.environ.get("SLMJOBS_RESUME_FROM") or None


def checkpoint_dir() -> str | None:
    """Where the run keeps checkpoints (`<run dir>/checkpoints`, created by the link)."""
    return os.environ.get("SLMJOBS_CHECKPOINT_DIR") or None


def run_dir() -> str | None:
    return os.environ.get("SLMJOBS_RUN_DIR") or None


def exit_status(finished: bool) -> int:
    """0 when the work is done, 75 when a later link has more to do."""
    return FINISHED if finished else HANDED_OFF


# ------------------------------------------------------------------ files in the run directory
def write_json_atomic(path: str, data: dict) -> None:
    """Through a scratch file, fsync and a rename: a reader sees the old file or the new one."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_rank_zero() -> bool:
    """Only one process of a multi-rank command writes the run's files."""
    return os.environ.get("RANK", "0") == "0"


def checkpoint_done(path: str, step: int) -> None:
    """Declare `path` (a file or a directory) the newest complete checkpoint, at `step`. Call it
    after the save returned: until then the previous declaration stands, so a link killed in
    the middle of a save resumes from the last complete one. Rank 0 only; a no-op outside slmjobs."""
    directory = run_dir()
    if directory is None or not is_rank_zero():
        return
    write_json_atomic(os.path.join(directory, DECLARATION_FILE),
                      {"path": os.path.abspath(path), "step": int(step), "time": time.time()})


def declared_checkpoint(directory: str) -> dict:
    """The declaration in run directory `directory`: {"path", "step", "time"}, or {} if none."""
    found = read_json(os.path.join(directory, DECLARATION_FILE))
    return found if isinstance(found.get("path"), str) and isinstance(found.get("step"), int) else {}


_heartbeat_state: dict = {}


def heartbeat(step: int, total: int | None = None, loss: float | None = None,
              every_seconds: float = 5.0) -> None:
    """Tell `slmjobs status` where the command is (step of total, last loss, steps per second).
    Cheap to call at every step: it writes at most every `every_seconds`, and always when
    `step` reaches `total`. Rank 0 only; a no-op outside slmjobs."""
    directory = run_dir()
    if directory is None or not is_rank_zero():
        return
    now = time.time()
    first = _heartbeat_state.setdefault("first", (step, now))
    if now - _heartbeat_state.get("written", 0.0) < every_seconds and step != total:
        return
    rate = (step - first[0]) / (now - first[1]) if now > first[1] and step > first[0] else None
    link = os.environ.get("SLMJOBS_LINK")
    write_json_atomic(os.path.join(directory, HEARTBEAT_FILE), {
        "state": "finished" if total is not None and step >= total else "training",
        "link": int(link) if link else None, "step": int(step),
        "max_steps": int(total) if total is not None else None,
        "loss": float(loss) if loss is not None else None, "steps_per_sec": rate,
        "deadline": deadline(), "updated_at": now})
    _heartbeat_state["written"] = now


# ------------------------------------------------------------------ across ranks
def agree(flag: bool) -> bool:
    """True on every rank if it is True on any: all ranks stop at the same step. Uses
    torch.distributed only when the command itself has imported torch and initialised it."""
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


# ------------------------------------------------------------------ when to stop
def deadline_reason(deadline_at: float | None, now: float, step_seconds: float,
                    save_seconds: float, exit_seconds: float = EXIT_SECONDS,
                    extra: tuple = ()) -> str:
    """The one hand-off rule (this module's HandOff and the training worker's both ask it):
    "" while one more step, a save (with 25% slack), the exit and any `extra` work due after
    that step ((name, seconds) pairs: an evaluation) still end before the deadline; else
    why not, in one line."""
    if deadline_at is None:
        return ""
    needed = step_seconds + 1.25 * save_seconds + exit_seconds + sum(s for _, s in extra)
    if now + needed <= deadline_at:
        return ""
    return (f"deadline in {deadline_at - now:.1f} s < next step {step_seconds:.2f} s + save "
            f"{save_seconds:.2f} s + exit {exit_seconds:.1f} s"
            + "".join(f" + {name} {seconds:.2f} s" for name, seconds in extra))


class HandOff:
    """Decides at each step boundary whether to stop: a stop signal arrived, or one more step
    plus a save plus the exit would cross the deadline. Steps are timed between calls of
    `time_to_stop`; saves inside `with saving():` (the longest seen counts, with 25% slack)."""

    def __init__(self, deadline_at: float | None = None, signals: bool = True,
                 save_seconds_guess: float = SAVE_SECONDS_GUESS, exit_seconds: float = EXIT_SECONDS):
        self.deadline = deadline() if deadline_at is None else deadline_at
        self.save_seconds_guess = save_seconds_guess
        self.exit_seconds = exit_seconds
        self.step_seconds: list[float] = []
        self.save_seconds: list[float] = []
        self.signal_name: str | None = None
        self.stopped = False
        self.reason = ""
        self._mark: float | None = None
        if signals:
            self.stop_on_signals()

    def stop_on_signals(self, signals=STOP_SIGNALS) -> None:
        """The signals only set the flag; the decision is taken at the next step boundary.
        (Acting inside a handler is fragile: see Lightning #21406.) Main thread only."""
        def on_signal(signum, frame):
            if self.signal_name is None:
                self.signal_name = signal.Signals(signum).name
                print(f"slmjobs.link: received {self.signal_name}: stopping at the next step",
                      file=sys.stderr, flush=True)
        for sig in signals:
            signal.signal(sig, on_signal)

    def estimate_step(self) -> float:
        return max(self.step_seconds[-5:]) if self.step_seconds else 0.0

    def estimate_save(self) -> float:
        return max(self.save_seconds) if self.save_seconds else self.save_seconds_guess

    def local_reason(self) -> str:
        """Why this process wants to stop now ("" if it does not); marks a step boundary."""
        now = time.time()
        if self._mark is not None:
            self.step_seconds.append(now - self._mark)
        self._mark = now
        if self.signal_name:
            return f"signal {self.signal_name}"
        return deadline_reason(self.deadline, now, self.estimate_step(), self.estimate_save(),
                               self.exit_seconds)

    def time_to_stop(self) -> bool:
        """Call once per step boundary, on every rank: True (on all of them) when they stop."""
        reason = self.local_reason()
        if agree(bool(reason)):
            self.stop(reason or "another rank asked to stop")
        return self.stopped

    def stop(self, reason: str) -> None:
        if not self.stopped:
            self.stopped, self.reason = True, reason
            print(f"slmjobs.link: handing off: {reason}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def saving(self):
        """Time a save, so the next decision budgets for it; step timing skips it."""
        started = time.time()
        try:
            yield
        finally:
            self.save_took(time.time() - started)

    def save_took(self, seconds: float) -> None:
        """A save (timed by the caller) ended now."""
        self.save_seconds.append(seconds)
        self._mark = time.time()
