"""Submitting a run's links, and asking which of its jobs are still alive. Used by launch (link
1), the chain (successors), resume and cancel.

    submit_link(run_dir, link, hold_on=None) -> job id   render, submit, append `submitted`
    active_jobs(run_dir, events) -> {job id: Job}         queued, held, running or unknown

One rule for a scheduler that cannot be asked: its jobs are UNKNOWN and count as active. A job
we cannot see may still run, so resume refuses, cancel tries to delete it and launch keeps the
name; nothing is ever concluded from the scheduler's silence.
"""

from __future__ import annotations

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


def submit_link(run_dir, link: int, hold_on: str | None = None) -> str:
    """Write link N's script, submit it (held on `hold_on` if given), append `submitted`."""
    spec = rundir.load_run(run_dir)
    path = write_link_script(run_dir, link, spec)
    backend = backend_of(spec)
    job_id = backend.submit(path, hold_on=hold_on)
    try:
        ledger.append(run_dir, events.submitted(link, job_id, str(path.relative_to(run_dir)),
                                                hold_on))
    except BaseException:
        backend.cancel([job_id])  # an unrecorded job would run unseen: take it back
        raise
    return job_id


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
