"""Submitting a run's links, and asking which of its jobs are still alive. Used by launch (link
1), the chain (successors), resume and cancel.

    submit_link(run_dir, link, hold_on=None) -> job id   render, submit, append `submitted`
    active_jobs(run_dir, events) -> {job id: Job}         queued, held, running or unknown

A submission rides out a busy scheduler: errors the backend marks transient are retried with
backoff for the profile's `submit_retry_seconds` in all; a refused request fails at once.

One rule for a scheduler that cannot be asked: its jobs are UNKNOWN and count as active. A job
we cannot see may still run, so resume refuses, cancel tries to delete it and launch keeps the
name; nothing is ever concluded from the scheduler's silence.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from slmjobs import events, ledger, rundir
from slmjobs.backends import ACTIVE_STATES, UNKNOWN, Job, SchedulerError, get_backend
from slmjobs.errors import UsageError


def backend_of(spec: dict):
    """The backend of a run's scheduler, from run.yaml's profile snapshot."""
    return get_backend(spec["cluster"]["scheduler"])


def write_link_script(run_dir, link: int, spec: dict | None = None) -> Path:
    """Render link N from run.yaml into scripts/link-NNN.sh (executable) and return its path."""
    from slmjobs.render import render_link

    text = render_link(spec or rundir.load_run(run_dir), link)
    path = rundir.script_path(run_dir, link)
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.atomic_write(path, text, mode=0o755)
    return path


def submit_link(run_dir, link: int, hold_on: str | None = None, held: bool = False) -> str:
    """Write link N's script, submit it (held on `hold_on` if given; with a user hold if
    `held`: a sweep member waiting for a slot), append `submitted`."""
    spec = rundir.load_run(run_dir)
    path = write_link_script(run_dir, link, spec)
    backend = backend_of(spec)
    job_id = submit_with_retries(backend, path, hold_on,
                                 spec["cluster"].get("submit_retry_seconds", DEFAULT_RETRY_SECONDS),
                                 held=held)
    try:
        ledger.append(run_dir, events.submitted(link, job_id, str(path.relative_to(run_dir)),
                                                hold_on, held))
    except BaseException:
        backend.cancel([job_id])  # an unrecorded job would run unseen: take it back
        raise
    return job_id


DEFAULT_RETRY_SECONDS = 180  # run.yaml snapshots from before the profile key
MAX_BACKOFF_SECONDS = 30


def submit_with_retries(backend, script: Path, hold_on: str | None, budget_seconds: float,
                        held: bool = False) -> str:
    """backend.submit, asked again after 1, 2, 4 ... (at most 30) s while the scheduler says it
    is busy or unreachable and the budget lasts; the last error is raised as it came."""
    give_up = time.monotonic() + budget_seconds
    delay = 1.0
    while True:
        try:
            return backend.submit(script, hold_on=hold_on, held=held)
        except SchedulerError as exc:
            if not exc.transient or time.monotonic() + delay > give_up:
                raise
            print(f"slmjobs: the scheduler is busy or unreachable ({exc}); asking again in "
                  f"{delay:.0f} s", file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)


def ask(backend, job_ids: list[str]) -> dict[str, Job]:
    """The scheduler's view of `job_ids`; every one UNKNOWN (with the reason) when it cannot
    be asked."""
    if not job_ids:
        return {}
    try:
        return backend.query(job_ids)
    except (SchedulerError, UsageError) as exc:
        return {j: Job(job_id=j, state=UNKNOWN, reason=str(exc)) for j in job_ids}


def is_alive(job: Job) -> bool:
    """Queued, held, running, or the scheduler could not say (see the module's rule)."""
    return job.state in ACTIVE_STATES or job.state == UNKNOWN


def active_jobs(run_dir, run_events: list[dict] | None = None, backend=None) -> dict[str, Job]:
    """Every job of the run that is still alive. All submitted jobs are asked about: a link the
    ledger calls cancelled may still be dying (`dr`) for a moment."""
    run_events = ledger.read(run_dir) if run_events is None else run_events
    job_ids = events.submitted_job_ids(run_events)
    if not job_ids:
        return {}
    backend = backend or backend_of(rundir.load_run(run_dir))
    return {j: job for j, job in ask(backend, job_ids).items() if is_alive(job)}
