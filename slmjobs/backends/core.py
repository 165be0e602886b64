"""What every backend shares: the normalized job states, the Job record, the Backend interface,
running a scheduler's client commands and reading a job script's `#$` directives.
slmjobs.backends holds the registry; each scheduler's module imports only this one.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from slmjobs.errors import UsageError

# Normalized job states, the same for every backend.
QUEUED = "queued"    # waiting for resources
HELD = "held"        # waiting on a hold (a predecessor job, a user hold, an error state)
RUNNING = "running"  # started (includes SGE's transferring/suspended/being-deleted states)
ENDING = "ending"    # left the queue, but the scheduler's accounting does not have it yet
ENDED = "ended"      # left the queue and accounted: exit_status/failed are known
UNKNOWN = "unknown"  # the scheduler could not be asked
ACTIVE_STATES = (QUEUED, HELD, RUNNING)

# Values written into `#$` lines are not shell-quoted (Grid Engine is not a shell), so they are
# restricted to characters that need no quoting anywhere.
SAFE_WORD = re.compile(r"^[A-Za-z0-9_.,:=+@%/~-]+$")


class SchedulerError(RuntimeError):
    """The scheduler failed or answered something we cannot read (not the user's fault).
    `transient`: the scheduler was busy or unreachable, so the same request may succeed if
    asked again; otherwise it refused the request itself and asking again cannot help."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


COMMAND_TIMEOUT = 60  # seconds; a scheduler that does not answer in a minute is down


def run_client(argv: list[str], check: bool, needs: str, transient: re.Pattern) -> subprocess.CompletedProcess:
    """Run one of the scheduler's client commands. Not on PATH: a one-line UsageError that says
    what `needs` (the scheduler and its commands). A failure whose message matches `transient`
    (a busy or unreachable controller), or no answer within COMMAND_TIMEOUT, may succeed if
    asked again; any other failure (with `check`) is the scheduler refusing the request."""
    if shutil.which(argv[0]) is None:
        raise UsageError(f"{argv[0]} not found on PATH: {needs}; use a cluster profile with "
                         "scheduler: local")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{' '.join(argv)} did not answer within {COMMAND_TIMEOUT} s",
                             transient=True) from None
    if check and proc.returncode != 0:
        said = one_line(proc.stderr or proc.stdout)
        raise SchedulerError(f"{' '.join(argv)} failed (exit {proc.returncode}): {said}",
                             transient=bool(transient.search(said)))
    return proc


def one_line(text: str) -> str:
    """A command's (multi-line) message as one line."""
    return " / ".join(line.strip() for line in text.strip().splitlines() if line.strip())


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


class Backend:
    """The interface. Subclasses: backends.sge.SGEBackend, backends.slurm.SlurmBackend,
    backends.local.LocalBackend.

    Besides the job operations, a backend owns everything about its scheduler that the rest of
    slmjobs would otherwise have to name: the environment a job sees (JOB_ID_VARIABLE,
    SLOTS_VARIABLE), whether its commands are there (check_available), the profile keys it
    understands (PROFILE_KEYS, check_profile), what a request may ask of it (check_request),
    and its job script header (HEADER_TEMPLATE, header_context).
    """

    kind = "abstract"
    HEADER_TEMPLATE = "header-local.sh.j2"
    JOB_ID_VARIABLE: str | None = None     # the environment variable with the job's own id
    SLOTS_VARIABLE: str | None = None      # ... with the number of CPU slots it was granted
    USES_PROJECT = False                    # does a request carry a scheduler project (-P)?
    # key -> (allowed types, default, what is allowed), as profiles.SCHEMA
    PROFILE_KEYS: dict[str, tuple] = {}

    # ----------------------------------------------------------- the job's environment
    def current_job_id(self, environ=None) -> str | None:
        """The id of the job this process runs in, or None when it cannot be known."""
        environ = os.environ if environ is None else environ
        value = environ.get(self.JOB_ID_VARIABLE) if self.JOB_ID_VARIABLE else None
        return value.strip() if value and value.strip() else None

    # ----------------------------------------------------------- profiles and requests
    def check_available(self, profile: dict) -> None:
        """UsageError when this machine cannot submit to the scheduler (its commands missing)."""

    def check_profile(self, profile: dict, fail) -> None:
        """Check this backend's keys of a loaded profile; `fail(key, value, allowed)` makes the
        error to raise."""

    def check_request(self, profile: dict, spec: dict) -> None:
        """UsageError when the profile cannot serve the run's resources (spec's `gpus`,
        `cpus`: None for cpus_per_gpu x gpus)."""

    def header_context(self, profile: dict, spec: dict) -> dict:
        """The values HEADER_TEMPLATE uses beyond the common ones."""
        return {}

    # ----------------------------------------------------------- jobs

    def submit(self, script: Path, hold_on: str | None = None, held: bool = False) -> str:
        """Submit `script`; with `hold_on`, it starts only once that job has ended (however it
        ended); with `held`, only once `release` names it (a user hold)."""
        raise NotImplementedError

    def release(self, job_ids, after: str | None = None) -> None:
        """Lift the user hold of jobs submitted `held` (a job also held on a predecessor keeps
        waiting for it). `after`: they still wait until that job has ended (a sweep member over
        in its own job's hook frees its slot when that job leaves, not before)."""
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
