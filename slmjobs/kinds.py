"""Kinds of runs: what a run's progress and "finished" mean.

run.yaml's `kind` names one of these. The chain's guards and status ask the kind instead of
reading a trainer's fields themselves, so a new kind (a data-preparation chain that counts
shards, a single evaluation job) needs no branch anywhere else:

    progress_key             the field of `ended`/`resumed` events that holds durable progress
    progress_name            how a person calls that progress ("step")
    durable_progress(dir)    how much work survives a kill now (a checkpoint's step, shards)
    finished_trace(dir)      the work is complete although no `end` hook said so (a link
                             killed between the worker's finish and its `end` hook)
    position(progress)       (done, total) for status' progress column, from the heartbeat
    chains                   whether a link hands over to a successor at all
"""

from __future__ import annotations

import re

from slmjobs import rundir
from slmjobs.errors import UsageError

# Composer's checkpoint names carry the batch: ep0-ba120-rank0.pt
_BATCH_IN_NAME = re.compile(r"-ba(\d+)-")


class Train:
    """A training chain: progress is the step of the newest checkpoint."""

    name = "train"
    progress_key = "checkpoint_step"
    progress_name = "step"
    chains = True

    def durable_progress(self, run_dir) -> int | None:
        """The step of the checkpoint `latest-rank0.pt` points at (what the next link resumes
        from, after any damaged one was set aside), else progress.json's checkpoint step."""
        match = _BATCH_IN_NAME.search(rundir.latest_checkpoint_name(run_dir) or "")
        if match:
            return int(match.group(1))
        step = rundir.read_progress(run_dir).get("checkpoint_step")
        return step if isinstance(step, int) else None

    def finished_trace(self, run_dir) -> bool:
        progress = rundir.read_progress(run_dir)
        return progress.get("state") == "finished" and progress.get("checkpoint_step") is not None \
            and progress.get("checkpoint_step") == progress.get("max_steps")

    def position(self, progress: dict) -> tuple:
        return progress.get("step"), progress.get("max_steps")


class Job(Train):
    """One job that either does its work or fails (an evaluation): no successor, and its
    progress is whatever its heartbeat reports."""

    name = "job"
    chains = False

    def finished_trace(self, run_dir) -> bool:
        return rundir.read_progress(run_dir).get("state") == "finished"


KINDS = {kind.name: kind for kind in (Train(), Job())}


def of(spec_or_summary: dict):
    """The kind of a run, from its run.yaml or its digest."""
    name = rundir.run_kind(spec_or_summary)
    if name not in KINDS:
        raise UsageError(f"unknown run kind {name!r}: allowed are {', '.join(KINDS)}")
    return KINDS[name]
