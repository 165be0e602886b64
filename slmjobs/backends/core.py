"""What every backend shares: the normalized job states, the Job record, the Backend interface
and the reading of a job script's `#$` directives. slmjobs.backends holds the registry; each
scheduler's module imports only this one.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from slmjobs.errors import UsageError

# Normalized job states, the same for every backend.
QUEUED = "queued"    # waiting for resources
HELD = "held"        # waiting on a hold (a predecessor job, a user hold, an error state)
RUNNING = "running"  # started (includes SGE's transferring/suspended/being-deleted states)
ENDING = "ending"    # left the queue, but the scheduler's accounting does not have it yet
ENDED = "ended"      # left the queue and accounted: exit_status/failed are known
UNKNOWN = "unknown"  # the scheduler could not be asked
STATES = (QUEUED, HELD, RUNNING, ENDING, ENDED, UNKNOWN)
ACTIVE_STATES = (QUEUED, HELD, RUNNING)


class SchedulerError(RuntimeError):
    """The scheduler failed or answered something we cannot read (not the user's fault)."""


@dataclass
class Job:
    job_id: str
    state: str
    name: str = ""
    exit_status: int | None = None   # the job script's own exit status (128+N: signal N)
    failed: bool = False             # the scheduler ended it: h_rt, deleted, could not start
    reason: str = ""                 # why it failed / is held, in the scheduler's words
    wallclock: float | None = None   # seconds the job ran (ended jobs)
    slots: int | None = None
    gpus: int | None = None          # GPUs requested (-l gpus=N), when known
    start_time: float | None = None  # epoch seconds
    end_time: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Backend:
    """The interface. Subclasses: backends.sge.SGEBackend, backends.local.LocalBackend."""

    kind = "abstract"

    def submit(self, script: Path, hold_on: str | None = None) -> str:
        raise NotImplementedError

    def query(self, job_ids) -> dict[str, Job]:
        raise NotImplementedError

    def accounting(self, job_id: str) -> Job | None:
        raise NotImplementedError

    def cancel(self, job_ids) -> None:
        raise NotImplementedError

    def validate(self, script: Path) -> tuple[bool, str]:
        raise NotImplementedError


# ---------------------------------------------------------------- `#$` directives
def directives(script_text: str) -> list[list[str]]:
    """The `#$` option lines of a job script, each split like a shell would (`-l h_rt=1:00:00`)."""
    found = []
    for line in script_text.splitlines():
        if line.startswith("#$"):
            try:
                words = shlex.split(line[2:], comments=True)
            except ValueError as exc:
                raise UsageError(f"unreadable job script directive {line!r}: {exc}") from None
            if words:
                found.append(words)
    return found


_HMS = re.compile(r"^(?:(\d+):)?(?:(\d+):)?(\d+)$")


def parse_duration(value: str) -> int:
    """SGE time value -> seconds: `HH:MM:SS`, `MM:SS` or plain seconds."""
    match = _HMS.match(value.strip())
    if not match:
        raise UsageError(f"bad time value {value!r}: allowed are HH:MM:SS or seconds")
    parts = [int(p) for p in match.groups() if p is not None]
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds


def resource_requests(script_text: str) -> dict[str, str]:
    """All `-l name=value` requests of a script (later ones win, as in qsub)."""
    requests: dict[str, str] = {}
    for words in directives(script_text):
        for i, word in enumerate(words[:-1]):
            if word == "-l":
                for item in words[i + 1].split(","):
                    name, _, value = item.partition("=")
                    requests[name.strip()] = value.strip()
    return requests
