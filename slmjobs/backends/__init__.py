"""Schedulers behind one small interface (modelled on submitit's core/slurm split and
dask-jobqueue's per-scheduler classes).

    backend = get_backend("sge")             # or "slurm", "local"
    job_id = backend.submit(script, hold_on=None)
    jobs = backend.query([job_id, ...])       # ONE scheduler call for any number of jobs
    job = backend.accounting(job_id)          # a job that left the queue: how it ended (or None)
    backend.cancel([job_id, ...])
    job_id = backend.submit(script, held=True)  # held by the user until...
    backend.release([job_id, ...])            # (a sweep's throttle)
    ok, message = backend.validate(script)    # could this script ever run here?

All job options live in the script's header (`#$` lines for Grid Engine and the local backend,
`#SBATCH` lines for SLURM), rendered from the backend's own header template.
Only the launcher/chain choose `hold_on`; only a sweep's throttle `held`.
"""

from __future__ import annotations

from slmjobs.backends.core import (ACTIVE_STATES, ENDED, ENDING, HELD, QUEUED, RUNNING,
                                   UNKNOWN, Backend, Job, SchedulerError, directives,
                                   parse_duration, resource_requests)
from slmjobs.errors import UsageError

__all__ = ["ACTIVE_STATES", "ENDED", "ENDING", "HELD", "QUEUED", "RUNNING", "UNKNOWN",
           "Backend", "Job", "SchedulerError", "directives", "parse_duration",
           "resource_requests", "REGISTRY", "get_backend"]


def _sge() -> Backend:
    from slmjobs.backends.sge import SGEBackend

    return SGEBackend()


def _slurm() -> Backend:
    from slmjobs.backends.slurm import SlurmBackend

    return SlurmBackend()


def _local() -> Backend:
    from slmjobs.backends.local import LocalBackend

    return LocalBackend()


# A profile's `scheduler` -> a factory of its backend (imported only when used).
REGISTRY = {"sge": _sge, "slurm": _slurm, "local": _local}


def get_backend(kind: str) -> Backend:
    """The backend for a profile's `scheduler` value: a built-in one, or any importable module
    (a dotted or plain module name) whose BACKEND is a Backend class, so a scheduler can live
    outside slmjobs (docs/EXTENDING.md). Cheap: nothing is checked until used."""
    if kind in REGISTRY:
        return REGISTRY[kind]()
    return _backend_module(kind)()


def _backend_module(name: str) -> type:
    import importlib

    allowed = f"allowed are {', '.join(REGISTRY)}, or a module that defines BACKEND"
    try:
        module = importlib.import_module(name)
    except (ImportError, ValueError, TypeError) as exc:
        raise UsageError(f"unknown scheduler {name!r} ({exc}): {allowed}") from None
    backend = getattr(module, "BACKEND", None)
    if not (isinstance(backend, type) and issubclass(backend, Backend)):
        raise UsageError(f"scheduler module {name} defines no BACKEND (a Backend class): {allowed}")
    return backend
