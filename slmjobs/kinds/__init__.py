"""Kinds of runs: everything that differs between a training chain, a data preparation, an
evaluation or a user's own command. The rest of slmjobs (the run directory, the ledger, the
hooks, the guards, the backends, status, cancel, resume) is kind-blind and asks the kind.

A kind is ONE module that defines `KIND`, an instance of a `Kind` subclass. run.yaml's `kind`
names it: a built-in name is a module of this package (`train` -> slmjobs.kinds.train), any
other name an importable module (`mylab.kinds.distill`), so a kind can live outside slmjobs. The
job's hooks import it too: it must be importable where the job runs (its working directory is
on the path). docs/EXTENDING.md walks through writing one.

Only light imports here and in the kinds' module scope: status and the hooks load every kind
they meet.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from slmjobs import rundir
from slmjobs.errors import UsageError


@dataclass(frozen=True)
class Command:
    """What a link runs, as the job script renders it:

        <prefix> <arg> <arg> ... &

    `prefix` is shell text the kind writes itself (it may use "$SLMJOBS_PYTHON"; any value in
    it must already be quoted), each of `args` is shell-quoted by the template. `env` is
    exported before it; `requires` names a program that must be on the job's PATH (its
    directory goes first there), and `preflight` is the kind's own shell text that says so in
    the log when it is not. `comment` lines explain the command in the script."""
    prefix: str
    args: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    requires: str | None = None
    preflight: str = ('if [ -z "$SLMJOBS_PYTHON" ]; then\n'
                      '    echo "slmjobs: python not found on PATH=$PATH" >&2\n'
                      'fi')
    comment: tuple = ()


class Kind:
    """The defaults a kind overrides. Every method receives run.yaml's contents (`spec`) or the
    run directory; none may import torch or anything slow."""

    name = "abstract"
    progress_name = "step"   # how a person calls this kind's durable progress
    chains = True            # does a link hand over to a successor at all?
    gpus_default = 1         # the request's GPUs when --gpus is not given (0: a CPU-only job)
    gpus_min = 0             # the fewest it can run on
    columns: tuple = ()      # its status columns (slmjobs.table.Column), after the shared ones

    # ------------------------------------------------------------ the request
    def spec_fields(self, options: dict, profile: dict) -> dict:
        """run.yaml's kind-specific fields from the command line's kind options. UsageError
        for anything wrong that needs no filesystem (a typo, a value out of range)."""
        return dict(options)

    def check(self, spec: dict, *, dry_run: bool = False) -> None:
        """The launch-time checks that may read files (data present, configuration complete).
        UsageError, one line, when the run could never work. `dry_run`: what needs the
        cluster's filesystem may be skipped with a warning."""

    def recheck(self, spec: dict, run_dir, stop_reason: str | None) -> None:
        """`slmjobs resume`: refuse (UsageError) while the recorded stop's cause is still there."""
        if stop_reason == "bad_config":
            self.check(spec)

    def job_name(self, spec: dict) -> str:
        return spec["name"]

    # ------------------------------------------------------------ what a link runs
    def command(self, spec: dict) -> Command:
        raise NotImplementedError

    # ------------------------------------------------------------ progress
    def durable_progress(self, run_dir) -> int | None:
        """How much work survives a kill now: the guards stop a chain whose links do not
        move it (no_progress), and the ledger records it in `ended.progress`."""
        return rundir.read_progress(run_dir).get("checkpoint_step")

    def finished_trace(self, run_dir) -> bool:
        """The work is complete although no `end` hook said so (a link killed between the
        worker's finish and its hook): the next look at the run finishes it."""
        return rundir.read_progress(run_dir).get("state") == "finished"

    def position(self, progress: dict) -> tuple:
        """(done, total) for status' progress column and ETA, from the heartbeat."""
        return progress.get("step"), progress.get("max_steps")

    def eta(self, progress: dict, done, total) -> float | None:
        """Seconds left for a run still going: what is left of `position` at the heartbeat's
        rate (`steps_per_sec`), or None when either is unknown."""
        rate = progress.get("steps_per_sec")
        if isinstance(done, int) and isinstance(total, int) and isinstance(rate, (int, float)) \
                and rate > 0:
            return max(total - done, 0) / rate
        return None

    def before_link(self, run_dir, link: int) -> tuple[list, tuple | None]:
        """What a link's `begin` checks before the worker starts: (events to record, stop)
        where stop is (reason, detail) when the chain must stop instead."""
        return [], None

    def status(self, run_dir, progress: dict) -> dict:
        """Values for this kind's own status columns (keys of `columns`)."""
        return {}


def of(spec_or_summary: dict) -> Kind:
    """The kind of a run, from its run.yaml or its digest (runs from before kinds trained)."""
    return by_name(rundir.run_kind(spec_or_summary))


_LOADED: dict[str, Kind] = {}


def by_name(name: str) -> Kind:
    if name not in _LOADED:
        module_name = f"{__name__}.{name}" if name in BUILTIN else name
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UsageError(f"unknown run kind {name!r} ({exc}): allowed are "
                             f"{', '.join(BUILTIN)} or an importable module that defines KIND") from None
        kind = getattr(module, "KIND", None)
        if not isinstance(kind, Kind):
            raise UsageError(f"run kind module {module_name} defines no KIND (a slmjobs.kinds.Kind)")
        _LOADED[name] = kind
    return _LOADED[name]


BUILTIN = ("train", "prepare", "eval", "command", "submitit")
