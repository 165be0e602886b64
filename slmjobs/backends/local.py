"""The local backend: runs a rendered job script on this machine, detached, the way SGE would.

`submit` writes the job's record under the state directory ($SLMJOBS_LOCAL_STATE, default
~/.local/state/slmjobs) and starts a small supervisor (`python -m slmjobs.backends.local
supervise STATE_DIR ID`) in a NEW SESSION, so it outlives the submitter: a successor submitted
by the chain hook from inside a running job must survive that job's process group being
SIGKILLed at h_rt. The supervisor

  - waits while the job is held (hold_on: until that job has ended; an unknown job is no hold,
    as in SGE; held: until `release` names it),
  - runs `bash SCRIPT` in its own process group with the `#$` options -N, -o, -e, -j y, -cwd,
    -wd, -l h_rt and -pe honoured, and JOB_ID, JOB_NAME, NSLOTS set as SGE sets them,
  - enforces h_rt like SGE: SIGKILL to the whole process group at start + h_rt, no warning,
  - kills whatever is left in the job's process group when the script exits (SGE does too),
  - records the end (exit status, 128+signal when killed) in the job's record.

Records are JSON files replaced atomically; every change is a read-modify-write under one
lock, so `slmjobs status`/`cancel` work from any other terminal.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from slmjobs.backends.core import (ENDED, HELD, QUEUED, RUNNING, UNKNOWN, Backend, Job,
                                   directives, parse_duration)
from slmjobs.errors import UsageError

POLL_SECONDS = 0.2  # how often a held job looks at its predecessor


def state_dir() -> Path:
    root = os.environ.get("SLMJOBS_LOCAL_STATE") or os.path.expanduser("~/.local/state/slmjobs")
    return Path(root)


# ------------------------------------------------------------- records on disk
class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.jobs = self.root / "jobs"

    def ensure(self) -> None:
        # private: a record names the user's scripts and paths
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.jobs.mkdir(exist_ok=True, mode=0o700)

    @contextmanager
    def locked(self):
        self.ensure()
        with open(self.root / "lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def path(self, job_id: str) -> Path:
        return self.jobs / f"{job_id}.json"

    def read(self, job_id: str) -> dict | None:
        try:
            return json.loads(self.path(job_id).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def write(self, record: dict) -> None:
        target = self.path(record["job_id"])
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(record))
        os.replace(tmp, target)

    def update(self, job_id: str, **changes) -> dict | None:
        """Read-modify-write one record under the lock; returns the new record."""
        with self.locked():
            record = self.read(job_id)
            if record is None:
                return None
            record.update(changes)
            self.write(record)
            return record

    def next_id(self) -> str:
        """Caller holds the lock."""
        counter = self.root / "next_id"
        try:
            value = int(counter.read_text().strip())
        except (FileNotFoundError, ValueError):  # lost or torn: never reuse an existing id
            value = 1 + max((int(p.stem) for p in self.jobs.glob("*.json") if p.stem.isdigit()),
                            default=0)
        counter.write_text(str(value + 1))
        return str(value)


# ------------------------------------------------------------ the job's options
def job_options(script: Path, submit_cwd: str) -> dict:
    """What SGE would do with the script's `#$` lines (only the options that matter here)."""
    text = Path(script).read_text()
    options = {"name": Path(script).name, "stdout": None, "stderr": None, "merge": False,
               "workdir": os.path.expanduser("~"), "h_rt": None, "slots": 1, "gpus": None}
    for words in directives(text):
        for i, word in enumerate(words):
            value = words[i + 1] if i + 1 < len(words) else None
            if word == "-N" and value:
                options["name"] = value
            elif word == "-o" and value:
                options["stdout"] = value
            elif word == "-e" and value:
                options["stderr"] = value
            elif word == "-j" and value:
                options["merge"] = value.lower() in ("y", "yes", "true")
            elif word == "-cwd":
                options["workdir"] = submit_cwd
            elif word == "-wd" and value:
                options["workdir"] = value
            elif word == "-pe" and i + 2 < len(words):
                options["slots"] = int(words[i + 2].split("-")[-1])
            elif word == "-l" and value:
                for item in value.split(","):
                    key, _, val = item.partition("=")
                    if key.strip() == "h_rt":
                        options["h_rt"] = parse_duration(val)
                    elif key.strip() == "gpus":
                        options["gpus"] = int(val)
    return options


def _output_path(spec: str | None, suffix: str, name: str, job_id: str, workdir: str) -> str:
    """SGE's -o/-e rules: pseudo variables, relative to the working dir, a directory gets
    `<name>.o<id>`, no option means `<workdir>/<name>.o<id>`."""
    default = f"{name}.{suffix}{job_id}"
    if not spec:
        return os.path.join(workdir, default)
    for var, value in (("$JOB_ID", job_id), ("$JOB_NAME", name), ("$TASK_ID", "undefined"),
                       ("$HOME", os.path.expanduser("~")), ("$USER", os.environ.get("USER", ""))):
        spec = spec.replace(var, value)
    path = os.path.join(workdir, spec)
    return os.path.join(path, default) if os.path.isdir(path) else path


# ------------------------------------------------------------------- backend
class LocalBackend(Backend):
    kind = "local"
    HEADER_TEMPLATE = "header-local.sh.j2"
    JOB_ID_VARIABLE = "JOB_ID"   # _start sets these as Grid Engine does
    SLOTS_VARIABLE = "NSLOTS"

    def __init__(self, root: Path | None = None):
        self.store = Store(root or state_dir())

    def submit(self, script: Path, hold_on: str | None = None, held: bool = False) -> str:
        script = Path(script).resolve()
        options = job_options(script, os.getcwd())
        with self.store.locked():
            job_id = self.store.next_id()
            record = {
                "job_id": job_id, "name": options["name"], "script": str(script),
                "workdir": options["workdir"], "h_rt": options["h_rt"],
                "slots": options["slots"], "gpus": options["gpus"],
                "stdout": _output_path(options["stdout"], "o", options["name"], job_id,
                                       options["workdir"]),
                "stderr": None if options["merge"] else _output_path(
                    options["stderr"], "e", options["name"], job_id, options["workdir"]),
                "hold_on": str(hold_on) if hold_on else None, "user_hold": held,
                "state": HELD if hold_on or held else QUEUED, "submit_time": time.time(),
                "supervisor_pid": None,
            }
            self.store.write(record)
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "slmjobs.backends.local", "supervise", str(self.store.root),
             job_id],
            start_new_session=True,  # setsid: survives a killpg of the submitter's group
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True, cwd="/", env=_supervisor_env())
        # the start time is fixed at fork, so it identifies the supervisor even before exec
        self.store.update(job_id, supervisor_pid=supervisor.pid,
                          supervisor_identity=_process_identity(supervisor.pid))
        return job_id

    def release(self, job_ids) -> None:
        for job_id in job_ids:
            self.store.update(str(job_id), user_hold=False)  # its supervisor sees this

    def query(self, job_ids) -> dict[str, Job]:
        return {str(j): self._job(str(j)) for j in job_ids}

    def accounting(self, job_id: str) -> Job | None:
        job = self._job(str(job_id))
        return job if job.state == ENDED else None

    def cancel(self, job_ids) -> None:
        for job_id in job_ids:
            with self.store.locked():
                record = self.store.read(str(job_id))
                if record is None or record["state"] == ENDED:
                    continue
                record["cancel_requested"] = True
                if record["state"] != RUNNING:  # held or queued: drop it; its supervisor sees this and exits
                    record.update(state=ENDED, failed=True, reason="cancelled before it started",
                                  end_time=time.time())
                elif _supervisor_alive(record):
                    # The supervisor reaps the job under this lock: the group is still the job's.
                    _killpg(record["pgid"])  # the supervisor records the end
                else:  # a dead supervisor's pgid may be any process's by now (pids wrap at 32768)
                    record.update(state=ENDED, failed=True, reason="lost: its supervisor died",
                                  end_time=time.time())
                self.store.write(record)

    def validate(self, script: Path) -> tuple[bool, str]:
        try:
            options = job_options(Path(script), os.getcwd())
        except (OSError, ValueError, UsageError) as exc:
            return False, f"local: cannot run {script}: {exc}"
        if not os.path.isdir(options["workdir"]):
            return False, f"local: working directory {options['workdir']} does not exist"
        h_rt = f"h_rt={options['h_rt']} s" if options["h_rt"] else "no h_rt"
        return True, f"local: runs `bash {script}` in {options['workdir']}, {h_rt}"

    def _job(self, job_id: str) -> Job:
        record = self.store.read(job_id)
        if record is None:
            return Job(job_id=job_id, state=UNKNOWN, reason="no such local job")
        if record["state"] != ENDED and not _supervisor_alive(record):
            record = self.store.update(job_id, state=ENDED, failed=True, end_time=time.time(),
                                       reason="lost: its supervisor died") or record
        return _to_job(record)


# The submitter's PYTHONPATH (absent when it had none), kept for the job while the supervisor
# runs with its own. The job's environment lives only in these processes' memory, never on disk:
# it may hold API tokens (WANDB_API_KEY, HF_TOKEN).
_JOB_PYTHONPATH = "SLMJOBS_LOCAL_JOB_PYTHONPATH"


def _supervisor_env() -> dict:
    """The submitter's environment, with this slmjobs importable by the supervisor even when it
    is not installed (a checkout on sys.path only)."""
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    if "PYTHONPATH" in env:
        env[_JOB_PYTHONPATH] = env["PYTHONPATH"]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


def _job_env() -> dict:
    """The submitter's environment exactly, from the supervisor's own."""
    env = dict(os.environ)
    if _JOB_PYTHONPATH in env:
        env["PYTHONPATH"] = env.pop(_JOB_PYTHONPATH)
    else:
        env.pop("PYTHONPATH", None)
    return env


def _to_job(record: dict) -> Job:
    start, end = record.get("start_time"), record.get("end_time")
    return Job(job_id=record["job_id"], state=record["state"], name=record["name"],
               exit_status=record.get("exit_status"), failed=bool(record.get("failed")),
               reason=record.get("reason", ""), slots=record.get("slots"),
               gpus=record.get("gpus"), start_time=start, end_time=end,
               wallclock=(end - start) if start and end else None)


def _process_identity(pid: int) -> str | None:
    """`pid:start-ticks` of a live process (None if gone or a zombie): a reused pid differs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc (not Linux): existence is all we can check
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return f"{pid}:?"
    return None if fields[0] == "Z" else f"{pid}:{fields[19]}"


def _supervisor_alive(record: dict) -> bool:
    pid = record.get("supervisor_pid")
    if pid is None:
        return True  # just submitted: the pid is being recorded
    identity = _process_identity(pid)
    expected = record.get("supervisor_identity")
    return identity is not None and (expected is None or identity.endswith(":?")
                                     or identity == expected)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------- supervisor
def supervise(root: str, job_id: str) -> int:
    store = Store(Path(root))
    record = store.read(job_id)
    if record is None:
        return 1
    if record["state"] == HELD and not _wait_while_held(store, job_id):
        return 0  # cancelled while held
    with store.locked():
        record = store.read(job_id)
        if record is None or record["state"] == ENDED:
            return 0  # cancelled while queued
        try:
            process = _start(record)
        except OSError as exc:  # e.g. the -o directory does not exist (SGE: Eqw)
            record.update(state=ENDED, failed=True, end_time=time.time(),
                          reason=f"could not start: {exc}")
            store.write(record)
            return 1
        record.update(state=RUNNING, pid=process.pid, pgid=process.pid, start_time=time.time())
        store.write(record)
    in_time = _wait_unreaped(process.pid, record["h_rt"])
    # h_rt: a bare SIGKILL to the whole group, no warning; at a normal end, the job's leftovers
    # (SGE kills them too). The leader is not reaped yet, so the group id is still this job's.
    _killpg(process.pid)
    with store.locked():
        # Reaped under the lock: until ENDED is written below, cancel() may still signal the group.
        returncode = process.wait()
        exit_status = 128 - returncode if returncode < 0 else returncode
        reason = "" if in_time else f"h_rt exceeded ({record['h_rt']} s): killed"
        record = store.read(job_id) or record
        if record.get("cancel_requested"):
            reason = "cancelled"
        record.update(state=ENDED, exit_status=exit_status, end_time=time.time(),
                      failed=bool(reason), reason=reason)
        store.write(record)
    return 0


def _wait_while_held(store: Store, job_id: str) -> bool:
    """Block while the job is held by the user or its `hold_on` job has not ended (an unknown
    one is no hold); False if we were cancelled."""
    backend = LocalBackend(store.root)
    while True:
        own = store.read(job_id)
        if own is None or own["state"] == ENDED:
            return False
        predecessor = own.get("hold_on")
        if not own.get("user_hold") and (
                not predecessor or backend._job(predecessor).state in (ENDED, UNKNOWN)):
            store.update(job_id, state=QUEUED)
            return True
        time.sleep(POLL_SECONDS)


def _start(record: dict) -> subprocess.Popen:
    env = _job_env()
    env.update(JOB_ID=record["job_id"], JOB_NAME=record["name"], NSLOTS=str(record["slots"]),
               JOB_SCRIPT=record["script"], SGE_O_WORKDIR=record["workdir"],
               SLMJOBS_SCHEDULER="local")
    stdout = open(record["stdout"], "ab")
    stderr = open(record["stderr"], "ab") if record.get("stderr") else subprocess.STDOUT
    try:
        return subprocess.Popen(["bash", record["script"]], cwd=record["workdir"], env=env,
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                start_new_session=True)  # its own process group, like an SGE job
    finally:
        stdout.close()
        if stderr is not subprocess.STDOUT:
            stderr.close()


def _wait_unreaped(pid: int, h_rt: float | None) -> bool:
    """Wait for the job's leader to exit without reaping it: while it is a zombie its pid, the
    job's process-group id, cannot be reused, so killing that group can only hit the job.
    False if h_rt ran out first."""
    deadline = None if h_rt is None else time.monotonic() + h_rt
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "supervise":
        sys.exit(supervise(sys.argv[2], sys.argv[3]))
    sys.exit("usage: python -m slmjobs.backends.local supervise STATE_DIR JOB_ID")
