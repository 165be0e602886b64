"""The local backend, for real: detached supervisors, h_rt, holds, state across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmjobs.backends import ENDED, HELD, RUNNING, UNKNOWN
from slmjobs.backends.local import job_options
from slmjobs.errors import UsageError
from support import job_script


def ended(backend, job_id):
    job = backend.query([job_id])[job_id]
    return job if job.state == ENDED else None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_runs_detached_with_sge_environment_and_exit_status(local_backend, tmp_path, wait_until):
    script = job_script(tmp_path, "loc_basic",
                        'echo "$JOB_ID $JOB_NAME $NSLOTS $PWD"; echo oops >&2; exit 3',
                        "-cwd", "-pe omp 2")
    os.chdir(tmp_path)
    job_id = local_backend.submit(script)
    job = wait_until(lambda: ended(local_backend, job_id), 20, "the job to end")
    assert (job.exit_status, job.failed, job.slots) == (3, False, 2)  # its own exit, not killed
    assert local_backend.accounting(job_id) == job
    assert (tmp_path / "loc_basic.out").read_text() == f"{job_id} loc_basic 2 {tmp_path}\noops\n"


def test_walltime_is_a_sigkill_to_the_whole_group(local_backend, tmp_path, wait_until):
    # the job traps TERM/USR1/USR2 (it must get none of them) and starts a grandchild
    body = ("trap 'echo got-signal' TERM USR1 USR2; sleep 60 & echo $! > grandchild; "
            "echo started; wait; echo survived")
    script = job_script(tmp_path, "loc_hrt", body, "-l h_rt=0:0:2", f"-wd {tmp_path}")
    start = time.time()
    job_id = local_backend.submit(script)
    job = wait_until(lambda: ended(local_backend, job_id), 20, "the h_rt kill")
    assert 2 <= time.time() - start < 6
    assert (job.exit_status, job.failed) == (137, True) and "h_rt" in job.reason
    assert (tmp_path / "loc_hrt.out").read_text() == "started\n"  # no warning signal, no exit
    assert not alive(int((tmp_path / "grandchild").read_text()))


def test_hold_on_then_cancel_held_and_running(local_backend, tmp_path, wait_until):
    first = local_backend.submit(job_script(tmp_path, "loc_a", "sleep 30"))
    second = local_backend.submit(job_script(tmp_path, "loc_b", "echo ran"), hold_on=first)
    wait_until(lambda: local_backend.query([first])[first].state == RUNNING, 10, "first to run")
    time.sleep(0.5)
    assert local_backend.query([second])[second].state == HELD
    local_backend.cancel([first])
    job = wait_until(lambda: ended(local_backend, first), 10, "the cancelled job to end")
    assert (job.exit_status, job.reason) == (137, "cancelled")
    wait_until(lambda: ended(local_backend, second), 10, "the held job to run once first ended")
    assert (tmp_path / "loc_b.out").read_text() == "ran\n"

    held = local_backend.submit(job_script(tmp_path, "loc_c", "echo never"),
                                hold_on=local_backend.submit(job_script(tmp_path, "loc_d", "sleep 30")))
    local_backend.cancel([held])
    assert ended(local_backend, held).reason == "cancelled before it started"
    time.sleep(0.6)
    assert not (tmp_path / "loc_c.out").exists()
    assert local_backend.query(["999"])["999"].state == UNKNOWN


def test_a_job_submitted_held_starts_only_when_released(local_backend, tmp_path, wait_until):
    blocker = local_backend.submit(job_script(tmp_path, "loc_blocker", "sleep 30"))
    held = local_backend.submit(job_script(tmp_path, "loc_held", "echo ran"), held=True)
    both = local_backend.submit(job_script(tmp_path, "loc_both", "echo ran"), hold_on=blocker,
                                held=True)
    time.sleep(0.6)  # several looks of their supervisors
    assert [local_backend.query([j])[j].state for j in (held, both)] == [HELD, HELD]
    local_backend.release([held, both])
    wait_until(lambda: ended(local_backend, held), 10, "the released job to run")
    assert (tmp_path / "loc_held.out").read_text() == "ran\n"
    time.sleep(0.6)  # released, but still held on its running predecessor
    assert local_backend.query([both])[both].state == HELD
    local_backend.cancel([blocker])
    wait_until(lambda: ended(local_backend, both), 10, "the job held on both to run")
    assert (tmp_path / "loc_both.out").read_text() == "ran\n"


def test_state_is_visible_from_another_process(local_backend, tmp_path, wait_until):
    job_id = local_backend.submit(job_script(tmp_path, "loc_x", "sleep 30"))
    wait_until(lambda: local_backend.query([job_id])[job_id].state == RUNNING, 10, "to run")
    ask = ("import sys; from slmjobs.backends.local import LocalBackend as B; "
           "print(B().query([sys.argv[1]])[sys.argv[1]].state)")
    other = subprocess.run([sys.executable, "-c", ask, job_id], capture_output=True, text=True,
                           env=os.environ.copy(), check=True)  # same SLMJOBS_LOCAL_STATE
    assert other.stdout.strip() == RUNNING
    subprocess.run([sys.executable, "-c", "import sys; from slmjobs.backends.local import "
                    "LocalBackend as B; B().cancel([sys.argv[1]])", job_id], check=True)
    assert wait_until(lambda: ended(local_backend, job_id), 10, "cancel from elsewhere").reason \
        == "cancelled"


def test_successor_survives_the_killpg_of_its_submitters_group(local_backend, tmp_path,
                                                               wait_until):
    """What the chain hook does: submit the next link from inside the running job, held on it;
    then the job's whole process group is SIGKILLed (h_rt, OOM, qdel). The successor runs."""
    successor = job_script(tmp_path, "loc_next", 'echo "successor $JOB_ID"')
    submit = (f"{sys.executable} -c 'import os; from slmjobs.backends.local import LocalBackend; "
              f"print(LocalBackend().submit(\"{successor}\", hold_on=os.environ[\"JOB_ID\"]))' "
              "> next_id")
    body = f"{submit}\nkill -KILL 0\necho not-reached"
    job_id = local_backend.submit(job_script(tmp_path, "loc_link", body, f"-wd {tmp_path}"))
    job = wait_until(lambda: ended(local_backend, job_id), 20, "the link to be killed")
    assert job.exit_status == 137
    next_id = (tmp_path / "next_id").read_text().strip()
    wait_until(lambda: ended(local_backend, next_id), 20, "the successor to run")
    assert (tmp_path / "loc_next.out").read_text() == f"successor {next_id}\n"
    assert "not-reached" not in (tmp_path / "loc_link.out").read_text()


def test_lost_supervisor_is_reported_not_left_running(local_backend, tmp_path, wait_until):
    job_id = local_backend.submit(job_script(tmp_path, "loc_lost", "sleep 30"))
    record = wait_until(lambda: local_backend.store.read(job_id).get("pgid")
                        and local_backend.store.read(job_id), 10, "the job to start")
    os.kill(record["supervisor_pid"], 9)
    wait_until(lambda: not alive(record["supervisor_pid"]), 10, "the supervisor to die")
    job = local_backend.query([job_id])[job_id]
    assert job.state == ENDED and "supervisor died" in job.reason
    os.killpg(record["pgid"], 9)


def test_options_validate_and_bad_input(local_backend, tmp_path, wait_until):
    script = job_script(tmp_path, "opt", "true", "-l h_rt=01:00:00,gpus=2", "-cwd")
    options = job_options(script, "/submit/dir")
    assert (options["h_rt"], options["gpus"], options["workdir"]) == (3600, 2, "/submit/dir")
    assert local_backend.validate(script)[0]
    ok, message = local_backend.validate(job_script(tmp_path, "nowd", "true", "-wd /no/such/dir"))
    assert not ok and "/no/such/dir" in message
    bad = job_script(tmp_path, "bad", "true", "-l h_rt=1h")
    ok, message = local_backend.validate(bad)
    assert not ok and "'1h'" in message
    with pytest.raises(UsageError, match="'1h'"):
        local_backend.submit(bad)
    # an -o directory that does not exist: SGE puts the job in Eqw; here it ends, failed, at once
    lost_output = tmp_path / "lost.sh"
    lost_output.write_text("#!/bin/bash\n#$ -o /no/such/dir/x.out\ntrue\n")
    job_id = local_backend.submit(lost_output)
    job = wait_until(lambda: ended(local_backend, job_id), 10, "the job to fail to start")
    assert job.failed and "could not start" in job.reason


def test_a_lost_id_counter_never_reuses_a_job_id(local_backend, tmp_path, wait_until):
    first = local_backend.submit(job_script(tmp_path, "loc_id1", "true"))
    (local_backend.store.root / "next_id").write_text("")  # torn by a crash
    second = local_backend.submit(job_script(tmp_path, "loc_id2", "true"))
    assert int(second) > int(first)
    wait_until(lambda: ended(local_backend, second), 10, "the second job")


def test_a_held_job_sees_the_submitters_environment_but_no_token_is_written_down(
        local_backend, tmp_path, wait_until, monkeypatch):
    """Tokens in the launching user's environment reach the job (as a local user expects)
    without ever being written to the backend's state files, which are private."""
    token = "wandb-secret-4242424242"
    monkeypatch.setenv("WANDB_API_KEY", token)
    monkeypatch.setenv("HF_TOKEN", token + "-hf")
    monkeypatch.delenv("PYTHONPATH", raising=False)
    first = job_script(tmp_path, "loc_first", "sleep 1")
    second = job_script(tmp_path, "loc_env",
                        'echo "key=$WANDB_API_KEY hf=$HF_TOKEN pp=${PYTHONPATH-unset}"', "-cwd")
    os.chdir(tmp_path)
    predecessor = local_backend.submit(first)
    job_id = local_backend.submit(second, hold_on=predecessor)  # started later, by its supervisor
    wait_until(lambda: ended(local_backend, job_id), 30, "the held job to run")
    out = (tmp_path / "loc_env.out").read_text()
    assert out == f"key={token} hf={token}-hf pp=unset\n"
    state = local_backend.store.root
    for path in state.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), path
            assert path.stat().st_mode & 0o077 == 0 or path.name in ("lock", "next_id"), path
    assert (state / "jobs").stat().st_mode & 0o077 == 0
