"""SLURM (tested on Debian's 22.05.8): sbatch, ONE `squeue` for all jobs, sacct, scancel.

Measured behaviour this relies on (docs/SLURM.md): `sbatch --parsable` prints `ID` (`ID;cluster`
on a federation); an `afterany:ID` dependent starts about a second after its predecessor ends,
however it ended (completed, failed, timed out, cancelled); `squeue -t all` lists a job until
MinJobAge (300 s) after its end, with its final state; `sacct` (it needs slurmdbd) has the
job's state and `exit:signal` as soon as it ends, even while it is still COMPLETING; at `--time`
every process of the job gets SIGCONT + SIGTERM, then SIGKILL KillWait (30 s) later.
The job script's options live in its `#SBATCH` lines (header-slurm.sh.j2), so sbatch is given
only the script and what the chain decides: the dependency and a user hold.
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

from slmjobs.backends.core import (ENDED, ENDING, HELD, QUEUED, RUNNING, SAFE_WORD, Backend,
                                   Job, SchedulerError, one_line, run_client)
from slmjobs.errors import UsageError

# What SLURM's clients print when slurmctld (or slurmdbd) is busy, restarting or unreachable: the
# same request may go through a moment later. Anything else (a bad account, an impossible
# request) won't.
TRANSIENT = re.compile(r"socket timed out|unable to contact slurm controller|connection refused"
                       r"|temporarily unable|resource temporarily unavailable|timed? ?out"
                       r"|zero bytes were transmitted|communication connection failure"
                       r"|slurm_persist_conn|slurmdbd.*(not|down)", re.I)

# squeue's fields, `|`-separated (job names never hold one: run names are SAFE_WORDs). Explicit,
# because a user's SQUEUE_FORMAT changes the default; text, because `--json` is 6-50x slower and
# its schema changed in 22.05, 23.11 and 24.05.
SQUEUE_FORMAT = "%i|%T|%r|%S|%C|%b|%j"
SACCT_FIELDS = "JobID,JobName,State,ExitCode,ElapsedRaw,Start,End,AllocCPUS,AllocTRES"


NEEDS = "the 'slurm' scheduler needs SLURM's client commands (sbatch, squeue, sacct, scancel, scontrol)"


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return run_client(argv, check, NEEDS, TRANSIENT)


# ------------------------------------------------------------------------- squeue
# Pending reasons that mean "waits on a predecessor or a hold" (Grid Engine's `h`); waiting for
# resources, priority or a start time (--begin) is plain queued, as `qw` is.
HOLD_REASONS = ("Dependency", "DependencyNeverSatisfied", "JobHeldUser", "JobHeldAdmin")
# Job states (squeue %T, sacct State) by what they mean here.
RUNNING_STATES = {"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING",
                  "RESIZING", "STAGE_OUT"}
PENDING_STATES = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT"}


def normalize_state(state: str, reason: str) -> tuple[str, str]:
    """squeue's state and reason -> (normalized state, reason). A job that has ended (COMPLETED,
    TIMEOUT, CANCELLED, ...) has left the queue: ENDING, and sacct says how."""
    if state in RUNNING_STATES:
        return RUNNING, "" if state == "RUNNING" else state.lower()
    if state in PENDING_STATES:
        if state == "REQUEUE_HOLD" or reason in HOLD_REASONS:
            return HELD, f"hold ({reason})" if reason and reason != "None" else "hold"
        return QUEUED, "" if reason in ("", "None", "Priority", "Resources") else reason
    return ENDING, state.lower()


def parse_squeue(text: str) -> dict[str, Job]:
    """`squeue -h -t all -o SQUEUE_FORMAT` -> {job id: Job} (array tasks fold into their job)."""
    jobs: dict[str, Job] = {}
    for line in text.splitlines():
        fields = line.split("|", 6)
        if len(fields) != 7:
            continue
        raw_id, state, reason, start, cpus, gres, name = (f.strip() for f in fields)
        job_id = re.split(r"[_+;]", raw_id, maxsplit=1)[0]
        if not job_id.isdigit():
            continue
        normalized, why = normalize_state(state, reason)
        job = Job(job_id=job_id, state=normalized, reason=why, name=name,
                  slots=int(cpus) if cpus.isdigit() else None, gpus=_gpus(gres),
                  start_time=_time(start) if normalized in (RUNNING, ENDING) else None)
        previous = jobs.get(job_id)
        if previous is None or _rank(job.state) > _rank(previous.state):
            jobs[job_id] = job  # an array job is as far along as its most advanced task
    return jobs


def _rank(state: str) -> int:
    return {ENDING: -1, HELD: 0, QUEUED: 1, RUNNING: 2}.get(state, -1)


def _gpus(tres: str) -> int | None:
    """`gres:gpu:2` (squeue %b, 22.05), `gres/gpu:a100:2`, `gres/gpu=2` (sacct AllocTRES)."""
    match = re.search(r"gres[:/]gpu(?::[\w.-]+)?[:=](\d+)", tres)
    return int(match.group(1)) if match else None


def _time(text: str | None) -> float | None:
    """SLURM prints local time, ISO without a zone; `N/A`, `Unknown`, `None` when there is none."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp() if text else None
    except ValueError:
        return None


# -------------------------------------------------------------------------- sacct
# sacct's end states in plain words; these are the scheduler's verdict (`failed`), the others
# (COMPLETED, FAILED: the script's own nonzero exit) are not.
FAILED_IN_WORDS = {
    "TIMEOUT": "killed at its time limit (--time)",
    "CANCELLED": "cancelled (scancel)",
    "OUT_OF_MEMORY": "killed for using more memory than it asked for",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "PREEMPTED": "preempted",
    "DEADLINE": "past its --deadline",
    "REVOKED": "revoked (federation)",
}


def parse_sacct(text: str, job_id: str) -> Job | None:
    """`sacct -j ID -n --parsable2 -o SACCT_FIELDS` -> Job(state=ENDED), or None while the job
    has not ended. The allocation's line says how the job ended; the batch step's ExitCode is
    the script's own when the allocation's does not carry the signal that killed it."""
    rows = [line.split("|") for line in text.splitlines() if line.count("|") >= 8]
    allocation = next((r for r in rows if r[0] == str(job_id)), None)
    if allocation is None:
        return None
    state = allocation[2].split()[0]  # `CANCELLED by 0`
    if state in RUNNING_STATES or state in PENDING_STATES:
        return None
    batch = next((r for r in rows if r[0] == f"{job_id}.batch"), None)
    exit_status = _exit_status(allocation[3])
    if batch is not None and exit_status == 0:
        exit_status = _exit_status(batch[3])
    # The allocation's Elapsed stops at --time; the batch step's runs on through KillWait.
    elapsed = [int(r[4]) for r in (allocation, batch) if r is not None and r[4].isdigit()]
    # Until slurmdbd has the job's whole record, sacct names it "allocation" (measured, 22.05).
    name = "" if allocation[1] == "allocation" else allocation[1]
    return Job(job_id=str(job_id), state=ENDED, name=name, exit_status=exit_status,
               failed=state in FAILED_IN_WORDS,
               reason=FAILED_IN_WORDS.get(state, ""),
               wallclock=float(max(elapsed)) if elapsed else None,
               slots=int(allocation[7]) if allocation[7].isdigit() else None,
               gpus=_gpus(allocation[8]) or (0 if allocation[8] else None),
               start_time=_time(allocation[5]), end_time=_time(allocation[6]))


def _exit_status(code: str) -> int | None:
    """sacct's `exit:signal` -> the shell's convention (128 + signal when killed by one)."""
    status, _, signal = code.partition(":")
    if not status.isdigit():
        return None
    return 128 + int(signal) if signal.isdigit() and int(signal) else int(status)


# ---------------------------------------------------------------------- profile keys
_STR, _BOOL, _LIST = (str, type(None)), (bool,), (list, type(None))
PROFILE_KEYS = {
    "project": (_STR, None, "an account name (--account) or null"),
    "project_required": (_BOOL, False, "true or false"),
    "partition": (_STR, None, "a partition name (--partition) or null for the default"),
    "qos": (_STR, None, "a quality of service (--qos) or null"),
    "gpu_type": (_STR, None, "a GPU type for --gres=gpu:TYPE:N such as a100, or null"),
    "gpu_types": (_LIST, None, "the site's GPU type names (case-sensitive), or null for any"),
    "cpus_per_gpu": ((int,), 1, "a positive integer"),
    "extra_directives": ((list,), [], "a list of extra sbatch options, e.g. '--mem-per-cpu=8G'"),
}


def _check_profile(p: dict, fail) -> None:
    if p["cpus_per_gpu"] < 1:
        raise fail("cpus_per_gpu", p["cpus_per_gpu"], "a positive integer")
    if p["gpu_types"] is not None and not all(isinstance(v, str) and SAFE_WORD.match(v)
                                              for v in p["gpu_types"]):
        raise fail("gpu_types", p["gpu_types"], "a list of names (letters, digits and _.,:=+@%/~-)")
    if p["gpu_type"] is not None and p["gpu_types"] is not None \
            and p["gpu_type"] not in p["gpu_types"]:
        raise fail("gpu_type", p["gpu_type"], "one of gpu_types: " + ", ".join(p["gpu_types"]))
    if not all(isinstance(item, str) and item.startswith("-") and "\n" not in item
               for item in p["extra_directives"]):
        raise fail("extra_directives", p["extra_directives"],
                   "a list of one-line sbatch options, each starting with '-'")
    for key in ("project", "partition", "qos", "gpu_type"):
        if p[key] is not None and not SAFE_WORD.match(p[key]):
            raise fail(key, p[key], "letters, digits and _.,:=+@%/~- only")


def cpus(profile: dict, gpus: int, asked: int | None = None) -> int:
    """--cpus-per-task: what the request asked for (a CPU-only job's --cpus), else cpus_per_gpu
    for each GPU, one at least."""
    return asked if asked is not None else max(1, profile["cpus_per_gpu"] * gpus)


# ---------------------------------------------------------------------- backend
class SlurmBackend(Backend):
    kind = "slurm"
    HEADER_TEMPLATE = "header-slurm.sh.j2"
    JOB_ID_VARIABLE = "SLURM_JOB_ID"
    # Set in every job (SLURM_CPUS_PER_TASK only with --cpus-per-task): the CPUs granted here.
    SLOTS_VARIABLE = "SLURM_CPUS_ON_NODE"
    USES_PROJECT = True
    PROFILE_KEYS = PROFILE_KEYS

    def check_available(self, profile: dict) -> None:
        if shutil.which("sbatch") is None:
            raise UsageError(f"sbatch not found on PATH: cluster {profile['name']!r} needs SLURM's "
                             "client commands; allowed is a profile with scheduler: local "
                             "(--cluster local)")

    def check_profile(self, profile: dict, fail) -> None:
        _check_profile(profile, fail)

    def header_context(self, profile: dict, spec: dict) -> dict:
        return {
            "account": spec.get("project"), "partition": profile["partition"],
            "qos": profile["qos"], "gpu_type": profile["gpu_type"],
            "cpus": cpus(profile, spec["gpus"], spec.get("cpus")),
            "extra_directives": profile["extra_directives"],
        }

    def submit(self, script: Path, hold_on: str | None = None, held: bool = False) -> str:
        argv = ["sbatch", "--parsable"]
        if hold_on:
            # afterany: the successor starts however its predecessor ends (as -hold_jid does)
            argv.append(f"--dependency=afterany:{hold_on}")
        if held:
            argv.append("--hold")
        out = _run(argv + [str(script)]).stdout.strip()
        job_id = out.splitlines()[-1].split(";")[0] if out else ""
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch --parsable printed {out!r}, not a job id")
        return job_id

    def release(self, job_ids, after: str | None = None) -> None:
        ids = [str(j) for j in job_ids]
        if not ids:
            return
        if after:  # the dependency first: released alone they could start before it ends
            for job_id in ids:
                _run(["scontrol", "update", f"JobId={job_id}", f"Dependency=afterany:{after}"])
        _run(["scontrol", "release", ",".join(ids)])

    def query(self, job_ids) -> dict[str, Job]:
        """ONE `squeue` call for all of this user's jobs. A job it does not list, or lists as
        ended, has left the queue: ENDING (ask `accounting()` how it ended)."""
        wanted = [str(j) for j in job_ids]
        if not wanted:
            return {}
        # --me needs 20.11; -u works everywhere and names the same jobs
        out = _run(["squeue", "-u", getpass.getuser(), "-h", "-t", "all", "-o",
                    SQUEUE_FORMAT]).stdout
        listed = parse_squeue(out)
        return {j: listed.get(j) or Job(job_id=j, state=ENDING) for j in wanted}

    def accounting(self, job_id: str) -> Job | None:
        proc = _run(["sacct", "-j", str(job_id), "-n", "--parsable2", "-o", SACCT_FIELDS],
                    check=False)
        if proc.returncode != 0:
            return None  # slurmdbd unreachable for a moment: ask again later
        return parse_sacct(proc.stdout, str(job_id))

    def cancel(self, job_ids) -> None:
        ids = [str(j) for j in job_ids]
        if not ids:
            return
        proc = _run(["scancel"] + ids, check=False)
        problems = [line for line in (proc.stderr + proc.stdout).splitlines()
                    if line.strip() and "Invalid job id" not in line
                    and "already completing or completed" not in line]
        if proc.returncode != 0 and problems:
            raise SchedulerError(f"scancel {' '.join(ids)} failed: {one_line(' / '.join(problems))}",
                                 transient=bool(TRANSIENT.search(" ".join(problems))))

    def validate(self, script: Path) -> tuple[bool, str]:
        """`sbatch --test-only`: asks slurmctld whether and when the job could start, and
        submits nothing."""
        proc = _run(["sbatch", "--test-only", str(script)], check=False)
        return proc.returncode == 0, one_line(proc.stdout + "\n" + proc.stderr)
