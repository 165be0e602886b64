"""The `command` kind: any training script rides the chain (`slmjobs run -- CMD ARGS...`).

Request: the command's argv (kept in run.yaml exactly, rendered shell-quoted), an optional
--stop-signal and --resume-glob. A link runs `python -m slmjobs.wrapper`, which gives the command
the contract (docs/CONTRACTS.md, "Any command") and passes its exit status on: 0 finished, 75
handed off, 2 bad input, anything else crashed. Durable progress: the step of the checkpoint the
command declared (slmjobs.link.checkpoint_done); else its heartbeat's step; else, for a command
that says nothing, the time anything under the checkpoint directory (or matching --resume-glob)
last changed, so a link that changed nothing there made no progress.
"""

from __future__ import annotations

import glob
import os
import shutil

from slmjobs import link, rundir
from slmjobs.errors import UsageError
from slmjobs.kinds import Command, Kind
from slmjobs.table import Column, number, out_of
from slmjobs.wrapper import stop_signal

PREFLIGHT = """if [ -z "$SLMJOBS_PYTHON" ]; then
    echo "slmjobs: python not found on PATH=$PATH" >&2
fi"""


class RunCommand(Kind):
    name = "command"
    progress_name = "checkpoint"
    gpus_default = 1  # a training script wants a GPU; `--cpus N` alone asks for none
    gpus_min = 0
    columns = (Column("STEP", "step", out_of("step", "max_steps")),
               Column("LOSS", "loss", number("loss", ".3f")),
               Column("CKPT", "declared_step"))

    # ------------------------------------------------------------ the request
    def spec_fields(self, options: dict, profile: dict) -> dict:
        argv = [str(arg) for arg in options.get("argv", ())]
        if not argv or not argv[0].strip():
            raise UsageError("no command to run: allowed is `slmjobs run [OPTIONS] -- CMD ARGS...`")
        if any("\0" in arg for arg in argv):
            raise UsageError(f"command argument {next(a for a in argv if chr(0) in a)!r} contains a "
                             "NUL byte: allowed is any other text")
        try:
            stop = stop_signal(options.get("stop_signal"))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return {"argv": argv, "stop_signal": stop.name if stop else None,
                "resume_glob": options.get("resume_glob") or None}

    def check(self, spec: dict, *, dry_run: bool = False) -> None:
        check_program(spec)

    # ------------------------------------------------------------ what a link runs
    def command(self, spec: dict) -> Command:
        args = [spec["run_dir"]]
        if spec.get("stop_signal"):
            args += ["--stop-signal", spec["stop_signal"]]
        if spec.get("resume_glob"):
            args += ["--resume-glob", spec["resume_glob"]]
        return Command('"$SLMJOBS_PYTHON" -m slmjobs.wrapper', [*args, "--", *spec["argv"]],
                       env={"SLMJOBS_RUN_NAME": spec["name"], "SLMJOBS_RUN_DIR": spec["run_dir"],
                            "SLMJOBS_CHECKPOINT_DIR": str(rundir.checkpoints_dir(spec["run_dir"]))},
                       preflight=PREFLIGHT, comment=(
            "The user's command, under the contract of docs/CONTRACTS.md (\"Any command\"): the",
            "wrapper sets SLMJOBS_RESUME_FROM, creates SLMJOBS_CHECKPOINT_DIR, runs the command in",
            "its own process group and passes its exit status on (0 finished, 75 handed off)."))

    # ------------------------------------------------------------ progress
    def durable_progress(self, run_dir) -> int | None:
        declared = link.declared_checkpoint(str(run_dir)).get("step")
        if declared is not None:
            return declared
        step = rundir.read_progress(run_dir).get("step")
        if isinstance(step, int):
            return step
        return last_change(run_dir)

    def finished_trace(self, run_dir) -> bool:
        """A checkpoint declared at the heartbeat's total: the work is done and saved."""
        total = rundir.read_progress(run_dir).get("max_steps")
        declared = link.declared_checkpoint(str(run_dir)).get("step")
        return isinstance(total, int) and declared is not None and declared >= total

    def status(self, run_dir, progress: dict) -> dict:
        return {"loss": progress.get("loss"),
                "declared_step": link.declared_checkpoint(str(run_dir)).get("step")}


KIND = RunCommand()


def last_change(run_dir) -> int | None:
    """The newest modification time (whole seconds) of anything under the checkpoint directory
    or matching the run's --resume-glob: it moves on exactly when a link wrote something there
    (a new file, a rewrite; a removal inside a subdirectory, through its time). None when
    there is nothing."""
    root = rundir.checkpoints_dir(run_dir)
    paths = []  # not the directory itself: the wrapper creating it is no progress
    for directory, subdirs, files in os.walk(root):
        paths += [os.path.join(directory, name) for name in subdirs + files]
    spec = _spec(run_dir)
    if spec.get("resume_glob"):  # relative to the job's working directory, as the wrapper reads it
        paths += glob.glob(os.path.join(spec.get("workdir") or "", spec["resume_glob"]),
                           recursive=True)
    times = []
    for path in paths:
        try:
            times.append(int(os.stat(path).st_mtime))
        except OSError:
            continue
    return max(times) if times else None


def _spec(run_dir) -> dict:
    try:
        return rundir.load_run(run_dir)
    except UsageError:
        return {}


def check_program(spec: dict) -> None:
    """The command's program must exist where the job runs. Checked when that can be known
    here: the job's PATH is the launcher's own with the interpreter's directory first, unless
    the profile's modules or setup lines change it (then the link's log says it, exit 2)."""
    program, profile = spec["argv"][0], spec["cluster"]
    if "/" in program:
        path = program if os.path.isabs(program) else os.path.join(spec["workdir"], program)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise UsageError(f"command {program!r} is not an executable file (looked at {path}): "
                             "allowed is an executable path or a program on the job's PATH")
        return
    if profile.get("modules") or profile.get("env_setup") or profile.get("python") \
            or profile.get("python_module"):
        return  # the job's PATH is made there: the wrapper reports a missing program
    path = os.pathsep.join(p for p in (spec.get("bin_dir"), os.environ.get("PATH", "")) if p)
    if shutil.which(program, path=path) is None:
        raise UsageError(f"command {program!r} not found on the job's PATH ({path}): allowed is "
                         "a program on that PATH or a path to an executable file")
