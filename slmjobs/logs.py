"""`slmjobs logs RUN [--follow]`: a run's link logs, in link order, across links."""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

from slmjobs import monitor, rundir
from slmjobs.errors import UsageError


def follow_logs(run_dir, follow: bool = False, poll_seconds: float = 0.5,
                status_seconds: float = 10.0, out=None) -> int:
    """Print every link's log in order. With follow, keep printing what is appended, move on to
    the next link's log when it appears, and return once the run is in a terminal state (no job
    queued, held, running or ending) and every log has been read to its end. Logs are read every
    `poll_seconds`; the scheduler is asked only every `status_seconds` (a follow may last days,
    and a qstat twice a second for days is unkind to a shared qmaster)."""
    out = out or sys.stdout
    run_dir = Path(run_dir)
    if not monitor.exists(run_dir):
        raise UsageError(f"{run_dir} is not a run directory (no run.yaml, no jobs.jsonl)")
    offsets: dict[Path, int] = {}
    polls_per_status = max(1, round(status_seconds / poll_seconds))
    for poll in itertools.count():
        # decided BEFORE the last read, so nothing written before the end is lost
        done = not follow or (poll % polls_per_status == 0 and monitor.is_settled(run_dir))
        for path in rundir.link_logs(run_dir):
            offsets[path] = _print_new(path, offsets.get(path, 0), out)
        if done:
            return 0
        time.sleep(poll_seconds)


def _print_new(path: Path, offset: int, out) -> int:
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    if data:
        out.write(data.decode("utf-8", errors="replace"))
        out.flush()
    return offset + len(data)
