"""Execute rendered job scripts with stand-ins for the chain hooks and the worker.

`python` (SLMJOBS_PYTHON) records its argv and exits with $FAKE_BEGIN_RC for `begin`;
`composer` records its argv, lists a shared-memory prefix in $SLMJOBS_SHM_FILE and exits with
$FAKE_WORKER_RC, or (FAKE_WORKER=signals) waits for SIGUSR1/SIGUSR2 like the real trainer.
A hostile run name and hostile overrides must arrive as plain argv strings and run nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import train_spec

from slmjobs import launch, render

FAKE_PYTHON = """#!/bin/bash
# stand-in for "$SLMJOBS_PYTHON" -m slmjobs.chain begin|end ...
"$FAKE_RECORDER" "$FAKE_CALLS/python.jsonl" "$@"
if [ "$3" = begin ]; then exit "${FAKE_BEGIN_RC:-0}"; fi
exit 0
"""

RECORDER = """#!{python}
import json, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(sys.argv[2:]) + "\\n")
"""

FAKE_COMPOSER = """#!{python}
# stand-in for `composer -n N -m trainer.train ...`
import json, os, signal, sys, time
calls = os.environ["FAKE_CALLS"]
with open(os.path.join(calls, "composer.jsonl"), "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
with open(os.environ["SLMJOBS_SHM_FILE"], "a") as shm:
    shm.write(os.environ["FAKE_SHM_PREFIX"] + "\\n")
    shm.write("../../etc/passwd\\n")  # hostile line: must be ignored
if os.environ.get("FAKE_WORKER") == "signals":
    def stop(signum, frame):  # what the trainer does: checkpoint, then exit 75 (handed off)
        with open(os.path.join(calls, "signals"), "a") as out:
            out.write(f"{{signum}}\\n")
        sys.exit(75)
    signal.signal(signal.SIGUSR1, stop)
    signal.signal(signal.SIGUSR2, stop)
    signal.signal(signal.SIGTERM, stop)
    open(os.path.join(calls, "ready"), "w").close()
    time.sleep(30)
    sys.exit(1)
sys.exit(int(os.environ.get("FAKE_WORKER_RC", "75")))
"""

HOSTILE_NAME = "x$(touch PWNED_NAME)`touch PWNED_TICK`;touch PWNED_SEMI'\"\ntouch PWNED_NL"
HOSTILE_OVERRIDES = [
    "optim.lr=$(touch PWNED_SUBST)",
    "data.path=`touch PWNED_BACKTICK`",
    "train.x=1; touch PWNED_SEMI2",
    "train.q='single' \"double\"",
    "train.nl=a\ntouch PWNED_NEWLINE",
    "train.glob=*",
]


@pytest.fixture
def bench(tmp_path):
    """A fake venv bin dir (python + composer), a work dir, and a run dir for a hostile name."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    calls.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    for name, text in (("python", FAKE_PYTHON), ("record", RECORDER.format(python=sys.executable)),
                       ("composer", FAKE_COMPOSER.format(python=sys.executable))):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    run_dir = tmp_path / "runs" / HOSTILE_NAME
    (run_dir / "logs").mkdir(parents=True)
    return {"tmp": tmp_path, "bin": bin_dir, "calls": calls, "work": work, "run_dir": run_dir}


def hostile_script(bench, overrides=HOSTILE_OVERRIDES) -> Path:
    """Render through the real template, bypassing launch's validation on purpose."""
    spec = train_spec(gpus=2, cluster="local", name="placeholder",
                          python=str(bench["bin"] / "python"), workdir=str(bench["work"]))
    spec.update(name=HOSTILE_NAME, run_dir=str(bench["run_dir"]), overrides=list(overrides))
    path = bench["tmp"] / "link-001.sh"
    path.write_text(_render_without_header(spec))
    return path


def _render_without_header(spec: dict) -> str:
    """The real base template with an empty header block (the hostile name cannot pass
    `directive`, which is the point of that filter; the shell part is what is tested here)."""
    from slmjobs.profiles import config_dir

    template_dir = config_dir() / "templates"
    (template_dir / "noheader.sh.j2").write_text(
        '{% extends "builtin/base.sh.j2" %}{% block header %}{% endblock %}')
    return render.render_link({**spec, "cluster": {**spec["cluster"], "template": "noheader.sh.j2"}}, 1)


def run_script(bench, script: Path, env=None, **popen):
    full_env = {"PATH": "/usr/bin:/bin", "HOME": str(bench["tmp"]), "JOB_ID": "4242",
                "FAKE_CALLS": str(bench["calls"]), "FAKE_RECORDER": str(bench["bin"] / "record"),
                "FAKE_SHM_PREFIX": f"slmjt{os.getpid()}", **(env or {})}
    return subprocess.Popen(["bash", str(script)], cwd=bench["work"], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def calls(bench, name):
    path = bench["calls"] / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def pwned(bench):
    return sorted(str(p) for p in bench["tmp"].rglob("PWNED*"))


def test_hostile_name_and_overrides_are_passed_verbatim_and_never_run(bench):
    proc = run_script(bench, hostile_script(bench))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out  # the worker's "handed off" status comes through
    run_dir = str(bench["run_dir"])
    assert calls(bench, "composer") == [["-n", "2", "-m", "trainer.train", "model=tiny",
                                         f"run_name={HOSTILE_NAME}", f"run_dir={run_dir}",
                                         *HOSTILE_OVERRIDES]]
    assert calls(bench, "python") == [["-m", "slmjobs.chain", "begin", run_dir, "1"],
                                      ["-m", "slmjobs.chain", "end", run_dir, "1", "75"]]
    assert pwned(bench) == []


def test_begin_exit_3_means_nothing_to_do(bench):
    proc = run_script(bench, hostile_script(bench), env={"FAKE_BEGIN_RC": "3"})
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert calls(bench, "composer") == []
    assert [c[2] for c in calls(bench, "python")] == ["begin"]


def test_failed_begin_does_not_start_the_worker(bench):
    proc = run_script(bench, hostile_script(bench), env={"FAKE_BEGIN_RC": "1"})
    proc.communicate(timeout=60)
    assert proc.returncode == 1 and calls(bench, "composer") == []


@pytest.mark.parametrize("worker_rc, script_rc", [(0, 0), (75, 75), (2, 2), (99, 1), (100, 1)])
def test_exit_status_never_99_or_100(bench, worker_rc, script_rc):
    proc = run_script(bench, hostile_script(bench, overrides=[]), env={"FAKE_WORKER_RC": str(worker_rc)})
    proc.communicate(timeout=60)
    assert proc.returncode == script_rc
    assert calls(bench, "python")[-1][2:] == ["end", str(bench["run_dir"]), "1", str(worker_rc)]


def test_shared_memory_cleanup_removes_only_listed_blocks(bench):
    """This link's blocks and those a SIGKILLed earlier link of the run left on this host go;
    blocks of other jobs, and of earlier links on other hosts, stay."""
    host = socket.gethostname()
    tag = f"{os.getpid()}"
    mine = [Path(f"/dev/shm/slmjt{tag}_locals"), Path(f"/dev/shm/slmjt{tag}_barrier")]
    stale = Path(f"/dev/shm/slmjstale{tag}_locals")      # link 1 on this host, killed
    elsewhere = Path(f"/dev/shm/slmjelse{tag}_locals")   # link 1 listed on another host
    other = Path(f"/dev/shm/slmjother{tag}_locals")      # listed by nobody
    logs = bench["run_dir"] / "logs"
    (logs / f"link-001.{host}.shm").write_text(f"slmjstale{tag}\n")
    (logs / "link-001.otherhost.shm").write_text(f"slmjelse{tag}\n")
    for path in (*mine, stale, elsewhere, other):
        path.write_text("x")
    try:
        script = bench["tmp"] / "link-002.sh"
        script.write_text(hostile_script(bench, overrides=[]).read_text().replace(
            "export SLMJOBS_LINK=1", "export SLMJOBS_LINK=2").replace("LINK_TAG=001", "LINK_TAG=002"))
        proc = run_script(bench, script)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 75, out
        assert not any(p.exists() for p in (*mine, stale))
        assert elsewhere.exists() and other.exists()
        assert sorted(p.name for p in logs.glob("*.shm")) == ["link-001.otherhost.shm"]
    finally:
        for path in (*mine, stale, elsewhere, other):
            path.unlink(missing_ok=True)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM])
def test_wrapper_survives_scheduler_signals_to_the_process_group(bench, signum):
    """Grid Engine signals the whole process group (FINDINGS 3d): the bash wrapper must live on,
    the worker must still get the signal (its own handler), and its exit status must come back."""
    proc = run_script(bench, hostile_script(bench, overrides=[]), env={"FAKE_WORKER": "signals"},
                      start_new_session=True)
    ready = bench["calls"] / "ready"
    deadline = time.time() + 30
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, "worker never started"
        time.sleep(0.05)
    os.killpg(proc.pid, signum)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 75, out
    assert (bench["calls"] / "signals").read_text().split() == [str(int(signum))]
    assert calls(bench, "python")[-1][2:] == ["end", str(bench["run_dir"]), "1", "75"]


def test_deadline_is_job_start_plus_walltime_minus_margin(bench):
    script = hostile_script(bench, overrides=[])
    text = script.read_text().replace("composer -n", "env -0 > \"$FAKE_CALLS/env\"; composer -n")
    script.write_text(text)
    proc = run_script(bench, script)
    proc.communicate(timeout=60)
    env = dict(item.split("=", 1) for item in (bench["calls"] / "env").read_text().split("\0") if item)
    assert int(env["SLMJOBS_DEADLINE"]) == int(env["SLMJOBS_JOB_START"]) + 12 * 3600 - 300
    assert abs(int(env["SLMJOBS_JOB_START"]) - time.time()) < 60
    assert env["SLMJOBS_LINK"] == "1"
    assert env["SLMJOBS_SHM_FILE"] == f"{bench['run_dir']}/logs/link-001.{socket.gethostname()}.shm"


def test_profile_python_command_resolved_in_the_job(bench):
    """A profile with `python: NAME` (after its env setup) uses that interpreter, found on PATH."""
    spec = train_spec(gpus=2, cluster="local", name="pycmd", python="/nonexistent/python",
                          workdir=str(bench["work"]))
    spec["cluster"]["python"] = "python"
    spec["cluster"]["env_setup"] = [f'export PATH="{bench["bin"]}:$PATH"']
    spec["run_dir"] = str(bench["run_dir"])
    script = bench["tmp"] / "pycmd.sh"
    script.write_text(_render_without_header(spec))
    proc = run_script(bench, script)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert [c[2] for c in calls(bench, "python")] == ["begin", "end"]
    assert "/nonexistent" not in script.read_text().split("trap '' USR1 USR2 TERM")[1]
