"""`slmjobs run -- CMD`: the request (argv kept exactly, bad input refused with one line and
nothing left), slmjobs.link's pieces, and the wrapper's process handling with real processes:
the contract's variables, the stop signal at the deadline, and a command that dies with its
link when the link is SIGKILLed as Grid Engine's h_rt does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slmjobs import link, wrapper

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "slmjobs"]


def profile(tmp_path: Path, **extra) -> Path:
    data = {"scheduler": "local", "max_gpus": 1, "walltime_default": "00:01:00",
            "walltime_max": "01:00:00", "handoff_margin": 10, "runs_root": str(tmp_path / "runs"),
            **extra}
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def slmjobs_run(tmp_path: Path, *args, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "run", "--cluster", str(profile(tmp_path, **extra)), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args, said", [
    (["--cpus", "1", "--"], "no command to run"),
    (["--cpus", "1"], "no command to run"),
    (["--cpus", "1", "--", "no-such-program-slmjobs"], "'no-such-program-slmjobs' not found on the job's PATH"),
    (["--cpus", "1", "--", "./missing.sh"], "'./missing.sh' is not an executable file"),
    (["--cpus", "1", "--stop-signal", "KILL", "--", "true"], "unknown --stop-signal 'KILL'"),
    (["--cpus", "1", "--stop-signal", "SIGFOO", "--", "true"], "unknown --stop-signal 'SIGFOO'"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_is_left(tmp_path, args, said):
    proc = slmjobs_run(tmp_path, "--name", "bad", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and said in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not (tmp_path / "local-state").exists()  # nothing was submitted


def test_a_missing_program_is_not_judged_where_the_profile_makes_the_path(tmp_path):
    """Modules or setup lines change the job's PATH: the launch cannot know, the link says it."""
    proc = slmjobs_run(tmp_path, "--cpus", "1", "--dry-run", "--", "tool-from-a-module",
                       env_setup=["export PATH=/opt/tools/bin:$PATH"])
    assert proc.returncode == 0, proc.stderr


def test_the_argv_is_kept_exactly_and_rendered_quoted(tmp_path):
    hostile = ["python3", "-c", "print(1)", "a b", "$(touch pwned)", "it's", "`id`", "--", "*"]
    proc = slmjobs_run(tmp_path, "--cpus", "1", "--name", "q", "--stop-signal", "sigterm",
                       "--resume-glob", "out/*.pt", "--dry-run", "--", *hostile)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert "'$(touch pwned)'" in script and "'a b'" in script and "'`id`'" in script
    assert "--stop-signal \\\n    SIGTERM" in script and "'out/*.pt'" in script
    assert "export SLMJOBS_CHECKPOINT_DIR=" in script and "export SLMJOBS_RUN_NAME=q" in script
    assert not [line for line in script.splitlines() if line.startswith("#$ -l gpus")]


def test_run_yaml_keeps_the_argv_and_bash_reads_back_exactly_that(tmp_path, monkeypatch):
    from slmjobs import launch, rundir
    from slmjobs.render import render_link

    hostile = ["python3", "-c", "print(1)", "a b", "$(touch pwned)", "it's", "\\n", "", "--", "*"]
    monkeypatch.chdir(tmp_path)
    spec = launch.resolve(launch.Request(kind="command", options={"argv": hostile},
                                         cluster=str(profile(tmp_path)), cpus=1, name="q"))
    run_dir = launch.create(spec)
    assert rundir.load_run(run_dir)["argv"] == hostile
    script = render_link(rundir.load_run(run_dir), 1)
    command = script.split('"$SLMJOBS_PYTHON" -m slmjobs.wrapper \\\n', 1)[1].split("    &\n", 1)[0]
    out = subprocess.run(["bash", "-c", "printf '%s\\0' \\\n" + command], capture_output=True,
                         text=True, cwd=tmp_path, timeout=60)
    assert out.stdout.split("\0")[:-1] == [str(run_dir), "--", *hostile]
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------ slmjobs.link
def test_link_decides_from_the_deadline_the_step_and_the_save(monkeypatch):
    now = time.time()
    clock = link.HandOff(deadline_at=now + 100, signals=False, save_seconds_guess=10)
    assert clock.local_reason() == ""                  # 100 s left, 0 + 12.5 + 2 needed
    clock.step_seconds = [30.0]
    clock.save_seconds = [60.0]                        # 30 + 75 + 2 > 100
    assert clock.local_reason().startswith("deadline in")
    assert clock.time_to_stop() and clock.stopped
    assert link.exit_status(finished=False) == 75 and link.exit_status(finished=True) == 0


def test_link_has_no_deadline_outside_slmjobs(monkeypatch):
    monkeypatch.delenv("SLMJOBS_DEADLINE", raising=False)
    clock = link.HandOff(signals=False)
    clock.step_seconds = [1e9]
    assert clock.deadline is None and not clock.time_to_stop()


def test_a_signal_only_sets_the_flag_and_the_next_step_stops():
    before = signal.getsignal(signal.SIGUSR1)
    try:
        clock = link.HandOff(deadline_at=time.time() + 3600)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert not clock.stopped
        assert clock.time_to_stop() and clock.reason == "signal SIGUSR1"
    finally:
        for sig in link.STOP_SIGNALS:
            signal.signal(sig, before if sig == signal.SIGUSR1 else signal.SIG_DFL)


def test_checkpoint_done_declares_atomically_and_a_torn_declaration_is_none(tmp_path, monkeypatch):
    tmp_path = tmp_path / "run"
    tmp_path.mkdir()
    monkeypatch.setenv("SLMJOBS_RUN_DIR", str(tmp_path))
    link.checkpoint_done("ckpt/a.pt", 40)
    declared = link.declared_checkpoint(str(tmp_path))
    assert declared["step"] == 40 and declared["path"] == os.path.abspath("ckpt/a.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [link.DECLARATION_FILE]  # no scratch left
    text = (tmp_path / link.DECLARATION_FILE).read_text()
    (tmp_path / link.DECLARATION_FILE).write_text(text[: len(text) // 2])
    assert link.declared_checkpoint(str(tmp_path)) == {}


def test_outside_slmjobs_nothing_is_declared_or_written(tmp_path, monkeypatch):
    monkeypatch.delenv("SLMJOBS_RUN_DIR", raising=False)
    tmp_path = tmp_path / "here"
    tmp_path.mkdir()
    monkeypatch.chdir(tmp_path)
    link.checkpoint_done("x.pt", 1)
    link.heartbeat(1, 2, 0.5)
    assert list(tmp_path.iterdir()) == []


def test_ranks_agree_through_torch_distributed_when_it_is_initialised(tmp_path):
    """Two real gloo ranks: one wants to stop, both stop."""
    import socket

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = ("import sys, torch.distributed as dist\n"
            "from slmjobs import link\n"
            "rank = int(sys.argv[1])\n"
            "dist.init_process_group('gloo', init_method=sys.argv[2], rank=rank, world_size=2)\n"
            "print(link.agree(rank == 1), link.agree(False), flush=True)\n"
            "dist.barrier()\n")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    ranks = [subprocess.Popen([sys.executable, "-c", code, str(r), f"tcp://127.0.0.1:{port}"],
                              stdout=subprocess.PIPE, text=True, env=env) for r in range(2)]
    assert [p.communicate(timeout=300)[0].split() for p in ranks] == [["True", "False"]] * 2


def test_link_is_cheap_to_import_and_pulls_in_no_torch():
    code = "import sys, slmjobs.link, slmjobs.wrapper; print(sorted(m for m in ('torch', 'yaml', 'jinja2', 'click') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


# ------------------------------------------------------------------ the wrapper, for real
ECHO_CONTRACT = ("import json, os, sys, signal, time\n"
                 "keys = ['SLMJOBS_RUN_DIR', 'SLMJOBS_CHECKPOINT_DIR', 'SLMJOBS_RESUME_FROM', 'SLMJOBS_LINK']\n"
                 "json.dump({'env': {k: os.environ.get(k) for k in keys}, 'argv': sys.argv[1:],\n"
                 "           'pgid': os.getpgrp()}, open(sys.argv[1], 'w'))\n")


def run_wrapper(run_dir: Path, *args, env=None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slmjobs.wrapper", str(run_dir), *args],
                            env={**os.environ, **(env or {})}, cwd=run_dir.parent, **popen)


def test_the_wrapper_gives_the_contract_and_its_own_group(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    out = tmp_path / "seen.json"
    proc = run_wrapper(run_dir, "--", sys.executable, "-c", ECHO_CONTRACT, str(out), "a b", "$x")
    assert proc.wait(timeout=60) == 0
    seen = json.loads(out.read_text())
    assert seen["argv"] == [str(out), "a b", "$x"]
    assert seen["env"]["SLMJOBS_CHECKPOINT_DIR"] == str(run_dir / "checkpoints")
    assert (run_dir / "checkpoints").is_dir() and seen["env"]["SLMJOBS_RESUME_FROM"] == ""
    assert seen["pgid"] != os.getpgrp()


def test_resume_from_is_the_declaration_else_the_newest_glob_match(tmp_path):
    run_dir = tmp_path / "r"
    (run_dir / "out").mkdir(parents=True)
    for i, name in enumerate(["b-10.pt", "a-20.pt"]):  # a-20 is the newer, though it sorts first
        (run_dir / "out" / name).write_text("x")
        os.utime(run_dir / "out" / name, (1_000_000 + i, 1_000_000 + i))
    assert wrapper.resume_point(str(run_dir), str(run_dir / "out" / "*.pt")) == str(run_dir / "out" / "a-20.pt")
    (run_dir / "declared").mkdir()
    (run_dir / link.DECLARATION_FILE).write_text(json.dumps({"path": str(run_dir / "declared"), "step": 5}))
    assert wrapper.resume_point(str(run_dir), str(run_dir / "out" / "*.pt")) == str(run_dir / "declared")
    (run_dir / "declared").rmdir()  # a declaration whose checkpoint is gone: the glob again
    assert wrapper.resume_point(str(run_dir), str(run_dir / "out" / "*.pt")) == str(run_dir / "out" / "a-20.pt")


def test_the_stop_signal_reaches_the_command_at_the_deadline_and_exit_0_then_is_a_hand_off(tmp_path):
    """A program that only reacts to SIGTERM (saves and exits 0): the link hands off."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('saved on TERM', flush=True), sys.exit(0)))\n"
            "time.sleep(120)\n")
    proc = run_wrapper(run_dir, "--stop-signal", "TERM", "--", sys.executable, "-c", code,
                       env={"SLMJOBS_DEADLINE": str(time.time() + 2)}, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75 and "saved on TERM" in out


def test_a_command_not_found_at_run_time_is_bad_input(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    proc = run_wrapper(run_dir, "--", "no-such-program-slmjobs", stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.startswith("error: cannot run 'no-such-program-slmjobs'")


def test_a_command_dies_with_its_link_when_the_link_is_sigkilled(tmp_path, wait_until):
    """Grid Engine's h_rt SIGKILLs the job's process group only; the command, in a group of
    its own, must not outlive it (it would train beside the next link)."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    pids = tmp_path / "pids"
    code = ("import os, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
            "open(sys.argv[1], 'w').write(f'{os.getpid()} {child.pid}')\n"
            "time.sleep(300)\n")
    job = subprocess.Popen(["bash", "-c", "trap '' USR1 USR2 TERM; \"$0\" -m slmjobs.wrapper \"$1\" -- "
                            "\"$0\" -c \"$2\" \"$3\" & wait", sys.executable, str(run_dir), code, str(pids)],
                           start_new_session=True, cwd=tmp_path)
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, 60, "the command")
    command, grandchild = map(int, pids.read_text().split())
    os.killpg(job.pid, signal.SIGKILL)  # what h_rt does
    job.wait(timeout=10)

    def gone(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return _is_zombie(pid)

    wait_until(lambda: gone(command) and gone(grandchild), 10, "the command and its child to die")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def test_one_hand_off_rule_for_any_command_and_the_training_worker():
    """slmjobs.link.deadline_reason: the worker's HandOff (trainer/callbacks.py) asks it too."""
    from slmjobs.link import deadline_reason

    assert deadline_reason(None, 0.0, 5.0, 5.0) == ""
    assert deadline_reason(100.0, 80.0, 5.0, 8.0, exit_seconds=2.0) == ""  # 5 + 10 + 2 = 17 < 20
    late = deadline_reason(100.0, 84.0, 5.0, 8.0, exit_seconds=2.0)  # 17 > 16
    assert late.startswith("deadline in 16.0 s < next step 5.00 s + save 8.00 s + exit 2.0 s")
    assert deadline_reason(100.0, 80.0, 5.0, 8.0, 2.0, (("eval", 4.0),)).endswith("+ eval 4.00 s")
    import trainer.callbacks as worker
    assert worker.link.deadline_reason is deadline_reason
