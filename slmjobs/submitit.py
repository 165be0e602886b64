"""slmjobs as a submitit executor: `submitit.AutoExecutor(folder, cluster="slmjobs")` submits a
callable as an slmjobs run (kind `submitit`, slmjobs/kinds/submitit.py) on a cluster profile's
scheduler (local, Grid Engine, SLURM), so it rides the chain: `slmjobs status`, `logs`, `cancel`
and `resume` see it.

    executor = submitit.AutoExecutor("jobs", cluster="slmjobs")
    executor.update_parameters(timeout_min=60, gpus_per_node=1, slmjobs_cluster="scc")
    job = executor.submit(train, cfg)        # an slmjobs run named job.job_id
    job.result()                             # across all the links of its chain

submitit's protocol is kept: at a link's deadline a `Checkpointable` callable's checkpoint() is
called and what it returns (a DelayedSubmission) is pickled over the submission; the link then
exits 75 (handed off) instead of requeueing, because the chain already queued the next link,
which loads that pickle. The job id is the run's name, the same in every link, so the pickles
are found by it (as submitit-oar does). Registered through the entry points of group `submitit`
(pyproject.toml); an optional extra (`pip install slmjobs[submitit]`): the CLI never imports this.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import typing as tp
import uuid
import warnings
from pathlib import Path

from submitit.core import core, job_environment, utils
from submitit.core.job_environment import SignalHandler
from submitit.helpers import Checkpointable

from slmjobs import link
from slmjobs.kinds.submitit import count_handoff

RUN_LINK = "_slmjobs_run"  # folder/<job id>_slmjobs_run -> the run directory (a symlink)
# submitit's generic parameters, as this executor names them (update_parameters(timeout_min=...)
# through AutoExecutor arrives here as timeout_min, gpus_per_node as gpus, ...).
GENERIC = {"name": "name", "timeout_min": "timeout_min", "mem_gb": "mem_gb", "nodes": "nodes",
           "cpus_per_task": "cpus", "gpus_per_node": "gpus", "tasks_per_node": "tasks_per_node"}
# Its own (`slmjobs_cluster="scc"` through AutoExecutor): slmjobs.launch.Request's fields.
OWN = {"cluster", "project", "max_links", "python", "workdir", "after"}
# slmjobs run states -> submitit's (InfoWatcher.is_done: anything but READY, PENDING, RUNNING,
# UNKNOWN, REQUEUED, COMPLETING and PREEMPTED is done).
STATES = {"finished": "COMPLETED", "cancelled": "CANCELLED", "stopped": "FAILED",
          "failed": "FAILED", "broken": "FAILED", "unreadable": "UNKNOWN", "new": "PENDING",
          "waiting": "PENDING", "submitted": "PENDING", "queued": "PENDING", "held": "PENDING",
          "running": "RUNNING", "ending": "RUNNING"}
BETWEEN_LINKS = "REQUEUED"  # a link ended (handed off, killed, crashed), the next one is coming


# ------------------------------------------------------------------ watching the runs
class SlmjobsInfoWatcher(core.InfoWatcher):
    """The state of every registered job from `slmjobs status`' own reading (ledger, then ONE
    scheduler query for all runs), however many jobs are watched."""

    def __init__(self, delay_s: int = 30) -> None:
        super().__init__(delay_s)
        self.run_dirs: dict[str, Path] = {}

    def register_run(self, job_id: str, run_dir: Path) -> None:
        self.run_dirs[job_id] = run_dir
        self.register_job(job_id)

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"

    def update(self) -> None:
        from slmjobs.monitor import run_statuses  # the launcher's status reading, lazily

        job_ids = [j for j in self._registered if j in self.run_dirs]
        self._num_calls += 1
        for job_id, row in zip(job_ids, run_statuses([self.run_dirs[j] for j in job_ids])):
            self._info_dict[job_id] = {"State": STATES.get(row["state"], BETWEEN_LINKS),
                                       "slmjobs_state": row["state"]}
        self._last_status_check = time.time()
        for job_id in job_ids:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)


class SlmjobsJob(core.Job):
    """A submitit job whose chain of links is one slmjobs run (named `job_id`)."""

    watcher = SlmjobsInfoWatcher()

    def _register_in_watcher(self) -> None:
        if not self._tasks[0]:
            self.watcher.register_run(self.job_id, self.run_dir)

    @property
    def run_dir(self) -> Path:
        return run_dir_of(Path(self.paths.folder), self.job_id)

    def cancel(self, check: bool = True) -> None:
        """`slmjobs cancel`: the chain stops and every queued, held or running link is deleted."""
        from slmjobs.chain import cancel_run

        cancel_run(self.run_dir)

    def _get_logs_string(self, name: str) -> str | None:
        """The links' logs, in order (stdout and stderr are one file per link)."""
        logs = sorted((self.run_dir / "logs").glob("link-*.log"))
        if not logs:
            return None
        return "".join(path.read_text(errors="replace") for path in logs)


def run_dir_of(folder: Path, job_id: str) -> Path:
    return Path(os.path.realpath(folder / f"{job_id}{RUN_LINK}"))


# ------------------------------------------------------------------ submitting
class SlmjobsExecutor(core.PicklingExecutor):
    """Each submission is one slmjobs run; `map_array` makes one run (one chain) per item."""

    job_class = SlmjobsJob

    def __init__(self, folder: str | Path, max_num_timeout: int = 3,
                 max_pickle_size_gb: float = 1.0) -> None:
        super().__init__(folder, max_num_timeout=max_num_timeout,
                         max_pickle_size_gb=max_pickle_size_gb)

    @classmethod
    def affinity(cls) -> int:
        return 0  # only when asked for by name: AutoExecutor() alone never picks slmjobs

    @classmethod
    def _equivalence_dict(cls) -> core.EquivalenceDict:
        return GENERIC  # type: ignore[return-value]

    @classmethod
    def _valid_parameters(cls) -> set[str]:
        return set(GENERIC.values()) | OWN

    def _internal_update_parameters(self, **kwargs: tp.Any) -> None:
        """ValueError, as submitit's SLURM executor says it, for a name it does not know."""
        valid = self._valid_parameters()
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise ValueError(f"Unavailable parameter(s): {unknown}\nValid parameters are:\n  - "
                             + "\n  - ".join(sorted(valid)))
        for key in ("nodes", "tasks_per_node"):
            if kwargs.get(key, 1) != 1:
                raise ValueError(f"{key}={kwargs[key]!r}: allowed is 1 (an slmjobs link is one "
                                 "task on one node; use torchrun inside the function for more)")
        if kwargs.get("mem_gb") is not None:
            warnings.warn("mem_gb is not requested by slmjobs: the cluster profile decides memory")
        super()._internal_update_parameters(**kwargs)

    def _new_job_id(self) -> str:
        """A run name Grid Engine accepts: submitit's `name` (a letter first), a unique tail."""
        base = re.sub(r"[^A-Za-z0-9_.-]", "-", str(self.parameters.get("name") or "submitit"))
        base = base if base[:1].isalpha() else f"s{base}"
        return f"{base[:80]}-{uuid.uuid4().hex[:8]}"

    def _request(self, job_id: str, paths: utils.JobPaths):
        from slmjobs.launch import Request

        p = self.parameters
        minutes = p.get("timeout_min")
        return Request(kind="submitit", options={
            "folder": str(self.folder), "job_id": job_id, "submitted_pickle": str(paths.submitted_pickle),
            "result_pickle": str(paths.result_pickle)}, cluster=p.get("cluster"), gpus=p.get("gpus"),
            cpus=p.get("cpus"), walltime=f"{minutes // 60:02d}:{minutes % 60:02d}:00" if minutes else None,
            name=job_id, max_links=p.get("max_links"), project=p.get("project"),
            after=p.get("after"), python=p.get("python"), workdir=p.get("workdir"))

    def _internal_process_submissions(
            self, delayed_submissions: list[utils.DelayedSubmission]) -> list[core.Job[tp.Any]]:
        from slmjobs.launch import launch

        timeout_min = self.parameters.get("timeout_min", 5)
        jobs = []
        for delayed in delayed_submissions:
            job_id = self._new_job_id()
            paths = utils.JobPaths(self.folder, job_id=job_id, task_id=0)
            paths.folder.mkdir(parents=True, exist_ok=True)
            delayed.set_timeout(timeout_min, self.max_num_timeout)
            delayed.dump(paths.submitted_pickle)  # before link 1 can start: it loads it
            pointer = paths.folder / f"{job_id}{RUN_LINK}"
            try:
                self._check_size(paths.submitted_pickle, len(delayed_submissions))
                result = launch(self._request(job_id, paths))
                pointer.symlink_to(result["run_dir"])
            except BaseException:
                for path in (paths.submitted_pickle, pointer):
                    path.unlink(missing_ok=True)
                raise
            jobs.append(self.job_class(folder=self.folder, job_id=job_id))
        return jobs

    def _check_size(self, pickle_path: Path, count: int) -> None:
        size = pickle_path.stat().st_size / 1024**3
        if count * size > self.max_pickle_size_gb:
            raise RuntimeError(f"Submitting an estimated {count} x {size:.2f} > "
                               f"{self.max_pickle_size_gb}GB of objects through pickle: raise "
                               "executor.max_pickle_size_gb if this is intended")

    # PicklingExecutor's abstract methods: a submission is slmjobs.launch, not a script of ours.
    def _num_tasks(self) -> int:
        return 1

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        raise NotImplementedError("slmjobs renders the job script itself (slmjobs launch)")

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        raise NotImplementedError("slmjobs submits through its own backends")

    @staticmethod
    def _get_job_id_from_submission_command(string: bytes | str) -> str:
        raise NotImplementedError("the job id is the run's name")


# ------------------------------------------------------------------ inside a link
class HandOffHandler(SignalHandler):
    """submitit's handler, with one change: a Checkpointable's stop at the link's deadline is the
    chain's planned hand-off, not one of submitit's timeouts, so it is not counted against
    max_num_timeout (3 would stop a chain that slmjobs' guards, max_links and no_progress, let go
    on). Anything else is a timeout, as submitit says: not checkpointable -> UncompletedJobError."""

    def has_timed_out(self) -> bool:
        return not hasattr(self._delayed.function, "checkpoint")


class SlmjobsJobEnvironment(job_environment.JobEnvironment):
    """A link of an slmjobs run: the job id is the run's name (stable across links, so the
    checkpointed pickle is found by the next link); ranks from torchrun's variables."""

    _env = {"job_id": "SLMJOBS_SUBMITIT_JOB_ID", "num_tasks": "WORLD_SIZE",
            "num_nodes": "SLMJOBS_NUM_NODES", "node": "GROUP_RANK", "global_rank": "RANK",
            "local_rank": "LOCAL_RANK"}

    def _handle_signals(self, paths: utils.JobPaths, submission: utils.DelayedSubmission) -> None:
        handler = HandOffHandler(self, paths, submission)
        signal.signal(signal.SIGTERM, handler.bypass)
        signal.signal(signal.SIGCONT, handler.bypass)
        signal.signal(self._usr_sig(), handler.checkpoint_and_try_requeue)

    def _requeue(self, countdown: int) -> None:
        """The next link is already queued (held on this one): hand off."""
        directory = link.run_dir()
        done = count_handoff(directory) if directory else None
        print(f"slmjobs.submitit: checkpoint {done} written; handing off (exit {link.HANDED_OFF})",
              flush=True)
        raise SystemExit(link.HANDED_OFF)


# ------------------------------------------------------------------ a command that rides the chain
class Command(Checkpointable):
    """A Checkpointable that runs `argv` under the any-command contract (slmjobs.link) and
    continues it in the next link when it exits 75 (submitit #1732: a command is requeued).

    The command keeps its own time (SLMJOBS_DEADLINE): it saves, declares its checkpoint and
    exits 75; this callable then raises submitit's preempt signal on itself, so submitit's own
    path checkpoints it (checkpoint() returns it unchanged) and the link exits 75. Should the
    preempt signal come first, the command is sent `stop_signal` and waited for. The command
    starts with the preempt signal ignored: the wrapper sends that to the whole group."""

    def __init__(self, argv: list[str], stop_signal: str = "TERM") -> None:
        if not isinstance(argv, list) or not argv:
            raise TypeError("The command must be provided as a non-empty list")
        self.argv = [str(arg) for arg in argv]
        self.stop_signal = stop_signal
        self._process: subprocess.Popen | None = None

    def __call__(self) -> int:
        preempt = job_environment.JobEnvironment._usr_sig()
        self._process = subprocess.Popen(
            self.argv, preexec_fn=lambda: signal.signal(preempt, signal.SIG_IGN))
        status = self._process.wait()
        if status == link.HANDED_OFF:
            os.kill(os.getpid(), preempt)  # submitit's handler: checkpoint(), then exit 75
            while True:
                time.sleep(1)
        self._process = None
        if status != 0:
            raise subprocess.CalledProcessError(status, self.argv)
        return status

    def checkpoint(self) -> utils.DelayedSubmission:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.Signals[f"SIG{self.stop_signal.upper().removeprefix('SIG')}"])
            process.wait()
        return utils.DelayedSubmission(self)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_process": None}

