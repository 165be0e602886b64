"""The `submitit` kind: one function submitted through submitit's API (`submitit.AutoExecutor(folder,
cluster="slmjobs")`, slmjobs/submitit.py) rides the chain.

Request (written by the executor, never typed by a person): submitit's folder, the job id (the
run's name, the same in every link) and the paths of the submission and result pickles. A link
runs submitit's own `python -m submitit.core._submit FOLDER` under slmjobs' wrapper
(slmjobs/wrapper.py): at the link's deadline the wrapper sends submitit's preempt signal, the
callable's `checkpoint()` rewrites the submission pickle and the link exits 75; the next link
loads that pickle and continues. The scheduler's own warnings (Grid Engine's -notify SIGUSR2 on a
qdel) are not passed on: only the deadline hands off. Durable progress: the number of hand-offs
(each one a new pickle). This module never imports submitit: status loads
every kind.
"""

from __future__ import annotations

import os
import pickletools
import shlex

from slmjobs import link, rundir
from slmjobs.errors import UsageError
from slmjobs.kinds import Command, Kind
from slmjobs.table import Column

# submitit's preempt signal inside the job (SUBMITIT_PREEMPT_SIGNAL), sent by the wrapper at the
# deadline only. Not USR2 (Grid Engine's -notify) nor USR1 (s_rt) nor TERM: no scheduler sends
# SIGHUP to a batch job, so a hand-off can only come from the deadline.
PREEMPT_SIGNAL = "HUP"
ENDED = "submitit_ended"  # the stop reason when a later link finds the function's result written
HANDOFFS_FILE = "submitit.json"  # in the run directory: {"checkpoints": N}, N hand-offs so far


class Submitit(Kind):
    name = "submitit"
    progress_name = "checkpoint"
    gpus_default = 0  # submitit's own default: gpus_per_node is asked for explicitly
    gpus_min = 0
    columns = (Column("HANDOFFS", "checkpoints"),)  # checkpoint() calls so far

    def spec_fields(self, options: dict, profile: dict) -> dict:
        missing = [k for k in ("folder", "job_id", "submitted_pickle", "result_pickle")
                   if not options.get(k)]
        if missing:
            raise UsageError(f"a submitit run needs {', '.join(missing)}: allowed is a submission "
                             "through submitit.AutoExecutor(folder, cluster='slmjobs')")
        return {k: str(options[k]) for k in ("folder", "job_id", "submitted_pickle", "result_pickle")}

    def check(self, spec: dict, *, dry_run: bool = False) -> None:
        if not dry_run and not os.path.isfile(spec["submitted_pickle"]):
            raise UsageError(f"submitit submission {spec['submitted_pickle']} does not exist: "
                             "allowed is a pickle the executor wrote")

    def command(self, spec: dict) -> Command:
        wrapper = (f'"$SLMJOBS_PYTHON" -m slmjobs.wrapper {shlex.quote(spec["run_dir"])} '
                   f'--stop-signal {PREEMPT_SIGNAL} --ignore-warnings -- '
                   '"$SLMJOBS_PYTHON" -u -m submitit.core._submit')
        return Command(wrapper, [spec["folder"]], env={
            "SUBMITIT_EXECUTOR": "slmjobs", "SUBMITIT_PREEMPT_SIGNAL": PREEMPT_SIGNAL,
            "SLMJOBS_SUBMITIT_JOB_ID": spec["job_id"], "SLMJOBS_RUN_NAME": spec["name"]},
            comment=("submitit's own job runner on the pickled callable. At the deadline the",
                     f"wrapper sends SIG{PREEMPT_SIGNAL}: a Checkpointable saves what checkpoint()",
                     "returned over the pickle and exits 75; the next link continues from it."))

    # ------------------------------------------------------------ progress
    def durable_progress(self, run_dir) -> int | None:
        """How many times checkpoint() handed the callable on (None: never yet)."""
        return link.read_json(os.path.join(str(run_dir), HANDOFFS_FILE)).get("checkpoints")

    def finished_trace(self, run_dir) -> bool:
        """The function returned (and a link was killed before its `end` hook said so)."""
        return outcome(_spec(run_dir).get("result_pickle")) == "success"

    def before_link(self, run_dir, link: int) -> tuple[list, tuple | None]:
        """The function raised (submitit wrote its error): no link runs it again, whatever the
        previous link's exit said. job.result() raises it."""
        result = _spec(run_dir).get("result_pickle")
        if outcome(result) is not None:
            return [], (ENDED, f"the function's outcome is in {result}: job.result() has it")
        return [], None

    def status(self, run_dir, progress: dict) -> dict:
        return {"checkpoints": self.durable_progress(run_dir)}


KIND = Submitit()


def outcome(result_pickle: str | None) -> str | None:
    """"success" or "error", the first item of the (outcome, value) pair submitit pickles when
    the function ends; None while there is none. Read with pickletools, without unpickling: the
    value's classes need not be importable here."""
    try:
        with open(result_pickle, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                if isinstance(arg, str) and "UNICODE" in opcode.name:
                    return arg
    except (OSError, TypeError, ValueError):
        return None
    return None


def count_handoff(run_dir: str) -> int:
    """Inside a link, once checkpoint()'s pickle is written: one more hand-off (rank 0 only)."""
    path = os.path.join(run_dir, HANDOFFS_FILE)
    done = (link.read_json(path).get("checkpoints") or 0) + 1
    link.write_json_atomic(path, {"checkpoints": done})
    return done


def _spec(run_dir) -> dict:
    try:
        return rundir.load_run(run_dir)
    except UsageError:
        return {}
