"""`slmjobs status --watch` in a real terminal (tmux: send-keys, capture-pane), on run
directories written by the real writers: the ledger, the local backend's jobs, and for Grid
Engine runs a stand-in `qstat` first on PATH that logs every call (the real SGE backend code
asks it). Plus the loop itself against a counting backend double.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmjobs import backends as registry, ledger, watch
from slmjobs.backends import ENDED, RUNNING, Job
from slmjobs.backends.sge import SGEBackend
from support import make_run_dir

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
RUNS = 30  # if each run asked the scheduler, one redraw alone would exceed the bound below


def make_run(root: Path, name: str, scheduler: str, events=(), progress=None) -> Path:
    run_dir = make_run_dir(root / name, scheduler, max_links=3)
    for event in events:
        ledger.append(run_dir, event)
    if progress is not None:
        (run_dir / "progress.json").write_text(json.dumps(progress))
    return run_dir


def fake_qstat(bin_dir: Path, job_ids: list[str], calls: Path) -> None:
    """`qstat -u '*' -xml` listing `job_ids` as running; every call appends a line to `calls`."""
    jobs = "".join(f"<job_list state='running'><JB_job_number>{j}</JB_job_number>"
                   f"<JB_name>w{j}</JB_name><state>r</state><slots>1</slots></job_list>"
                   for j in job_ids)
    bin_dir.mkdir(exist_ok=True)
    xml = bin_dir / "qstat.xml"
    xml.write_text(f"<?xml version='1.0'?><job_info><queue_info>{jobs}</queue_info>"
                   f"<job_info></job_info></job_info>")
    (bin_dir / "qstat").write_text(f"#!/bin/bash\necho \"$*\" >> {calls}\ncat {xml}\n")
    (bin_dir / "qstat").chmod(0o755)


class Terminal:
    """A tmux server of our own (its socket under tmp_path) with one 200x50 bash pane."""

    def __init__(self, tmp_path: Path, env: dict):
        if shutil.which("tmux") is None:
            pytest.fail("tmux not installed (scripts/test.sh installs it): apt-get install -y tmux")
        self.socket = str(tmp_path / "tmux.sock")
        subprocess.run(["tmux", "-S", self.socket, "-f", "/dev/null", "new-session", "-d",
                        "-s", "t", "-x", "200", "-y", "50", "bash --norc --noprofile"],
                       env=env, check=True)

    def type(self, *keys: str) -> None:
        subprocess.run(["tmux", "-S", self.socket, "send-keys", "-t", "t", *keys], check=True)

    def screen(self, history: bool = False) -> str:
        extra = ["-S", "-"] if history else []
        return subprocess.run(["tmux", "-S", self.socket, "capture-pane", "-p", "-t", "t", *extra],
                              capture_output=True, text=True, check=True).stdout

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tmp_path):
    made = []

    def start(env: dict) -> Terminal:
        made.append(Terminal(tmp_path, env))
        return made[-1]

    yield start
    for t in made:
        t.close()


def watch_command(seconds: int, *runs: str) -> str:
    args = " ".join(shlex.quote(r) for r in runs)
    return f"{shlex.quote(PY)} -m slmjobs status {args} --watch {seconds}; echo watch-exit=$?"


def terminal_env(bin_dir: Path | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TERM="xterm", PS1="$ ")
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def test_watch_redraws_in_place_asks_qstat_once_per_interval_and_quits_on_ctrl_c(
        tmp_path, terminal, wait_until):
    root = Path(os.environ["SLMJOBS_RUNS_ROOT"])
    job_ids = [str(500 + i) for i in range(RUNS)]
    runs = [make_run(root, f"w{i:02d}", "sge",
                     events=[{"event": "submitted", "link": 1, "job_id": j},
                             {"event": "started", "link": 1, "job_id": j, "host": "vm"}],
                     progress={"run_name": f"w{i:02d}", "state": "training", "step": 50,
                               "max_steps": 200, "loss": 3.0, "steps_per_sec": 1.0})
            for i, j in enumerate(job_ids)]
    calls = tmp_path / "qstat-calls"
    fake_qstat(tmp_path / "bin", job_ids, calls)
    term = terminal(terminal_env(tmp_path / "bin"))
    started = time.monotonic()
    term.type(watch_command(1), "Enter")

    wait_until(lambda: "w29" in term.screen(), 60, "the first table")
    assert "every 1 s (Ctrl-C quits)" in term.screen()
    wait_until(lambda: calls.is_file() and len(calls.read_text().splitlines()) >= 4, 60,
               "four redraws")
    progress = json.loads((runs[7] / "progress.json").read_text())
    (runs[7] / "progress.json").write_text(json.dumps({**progress, "step": 123}))
    wait_until(lambda: "123/200" in term.screen(), 30, "the redraw to show the new step")

    screen = term.screen(history=True)  # the scrollback too: nothing scrolled away
    assert screen.count("RUN  ") == 1 and screen.count("Ctrl-C quits") == 1, screen
    assert sum(line.startswith("w") for line in screen.splitlines()) == RUNS

    term.type("C-c")
    wait_until(lambda: "watch-exit=0" in term.screen(), 30, "the watch to quit on Ctrl-C")
    elapsed = time.monotonic() - started
    asked = calls.read_text().splitlines()
    assert asked and all(line == "-u * -xml" for line in asked)
    # Redraws start at least 1 s apart and each asks once for all the runs: over `elapsed`
    # seconds at most elapsed/1 + 1 calls (30 per redraw would break this at the first).
    assert len(asked) <= elapsed + 1, (len(asked), elapsed)


def local_link(run_dir: Path, seconds: int) -> Path:
    """A link that records `started`, trains (sleeps), and records `ended` how=finished, as
    the chain hooks would."""
    record = (f"{PY} -c 'import sys; from slmjobs import ledger; ledger.append(sys.argv[1], "
              f"dict(event=sys.argv[2], link=1, job_id=sys.argv[3], how=\"finished\", "
              f"exit_status=0))' {run_dir}")
    path = run_dir / "link-001.sh"
    path.write_text(f"#!/bin/bash\n#$ -N wl\n#$ -o {run_dir}/logs/link-001.log\n#$ -j y\n"
                    f"{record} started \"$JOB_ID\"\nsleep {seconds}\n"
                    f"{record} ended \"$JOB_ID\"\n")
    return path


def test_watch_ends_by_itself_when_every_run_shown_has_finished_or_stopped(
        tmp_path, terminal, local_backend, wait_until):
    root = Path(os.environ["SLMJOBS_RUNS_ROOT"])
    for name, seconds in (("fast", 1), ("slow", 8)):
        run = make_run(root, name, "local")
        job_id = local_backend.submit(local_link(run, seconds))
        ledger.append(run, {"event": "submitted", "link": 1, "job_id": job_id})
    make_run(root, "guarded", "local",
             events=[{"event": "stopped", "reason": "no_progress", "detail": "3 links"}])
    term = terminal(terminal_env())
    term.type(watch_command(1), "Enter")

    screens = []
    wait_until(lambda: screens.append(term.screen()) or "watch-exit=0" in screens[-1], 120,
               "the watch to end by itself")
    assert any("slow" in s and "watch-exit" not in s for s in screens)  # it had to wait
    screen = screens[-1]
    assert "every run shown has finished or stopped" in screen
    states = {line.split()[0]: line.split()[5] for line in screen.splitlines()
              if line.split() and line.split()[0] in ("fast", "slow", "guarded")}
    assert states == {"fast": "finished", "slow": "finished", "guarded": "stopped"}
    assert all(job.state == ENDED for job in local_backend.query(["1", "2"]).values())


class CountingBackend(SGEBackend):
    """Grid Engine whose queue the test makes up: counts queries, ends every job at the third."""

    def __init__(self):
        self.queries: list[list[str]] = []

    def query(self, job_ids):
        self.queries.append(list(job_ids))
        state = ENDED if len(self.queries) >= 3 else RUNNING
        return {j: Job(job_id=j, state=state, exit_status=0) for j in job_ids}

    def accounting(self, job_id):
        return Job(job_id=job_id, state=ENDED, exit_status=0)


def test_one_query_per_redraw_whatever_the_number_of_runs(tmp_path, monkeypatch):
    backend = CountingBackend()
    monkeypatch.setitem(registry.REGISTRY, "sge", lambda: backend)
    slept: list[float] = []
    monkeypatch.setattr(watch.time, "sleep", slept.append)
    runs = []
    for i in range(5):
        job = str(10 + i)
        events = [{"event": "submitted", "link": 1, "job_id": job},
                  {"event": "started", "link": 1, "job_id": job}]
        runs.append(make_run(tmp_path, f"r{i}", "sge", events=events))

    def finish_when_the_jobs_end():  # the `end` hook writes `ended` as the job leaves
        if backend.queries and len(backend.queries) >= 2:
            for i, run in enumerate(runs):
                if not any(e["event"] == "ended" for e in ledger.read(run)):
                    ledger.append(run, {"event": "ended", "link": 1, "job_id": str(10 + i),
                                        "how": "finished", "exit_status": 0})
        return runs

    out = io.StringIO()
    assert watch.watch(finish_when_the_jobs_end, 2, out=out) == 0
    assert backend.queries == [[str(10 + i) for i in range(5)]] * 3  # one per redraw
    assert len(slept) == 2 and all(0 <= s <= 2 for s in slept)
    text = out.getvalue()
    assert text.count("every 2 s (Ctrl-C quits)") == 2 and text.count("RUN  ") == 3
    assert text.rstrip().split("every run shown has finished or stopped")[1].count("finished") == 5


def test_watch_refuses_a_too_short_interval_and_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for args, message in ((["--watch", "0.2"], "--watch 0.2: allowed: at least 1 second"),
                          (["--watch", "--json"], "--watch with --json: allowed: one of them")):
        done = subprocess.run([PY, "-m", "slmjobs", "status", *args], capture_output=True,
                              text=True, env=env)
        assert done.returncode == 2 and message in done.stderr, done.stderr
