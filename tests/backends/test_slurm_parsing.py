"""Parsing of SLURM output (samples captured from the real 22.05.8 test cluster in data/) and the
SLURM backend's error paths, with stand-in commands on PATH. The real path: test_slurm_real.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmjobs import profiles
from slmjobs.backends import ENDED, ENDING, HELD, QUEUED, RUNNING, SchedulerError
from slmjobs.backends.slurm import SlurmBackend, normalize_state, parse_sacct, parse_squeue
from slmjobs.errors import UsageError

DATA = Path(__file__).parent / "data"


def test_squeue_every_state_in_one_listing():
    jobs = parse_squeue((DATA / "squeue_mixed.txt").read_text())
    states = {job_id: job.state for job_id, job in jobs.items()}
    assert states == {
        "16": RUNNING,
        "17": HELD,    # PENDING (Dependency): the successor held on a running link
        "18": HELD,    # PENDING (JobHeldUser): sbatch --hold
        "19": QUEUED,  # PENDING (BeginTime): waits for a time, as qw with -a
        # ended, still listed until MinJobAge: left the queue, sacct says how
        "1": ENDING, "2": ENDING, "6": ENDING, "7": ENDING, "8": ENDING, "9": ENDING,
        "10": ENDING, "11": ENDING, "12": ENDING, "13": ENDING, "21": ENDING,
        "20": ENDING,  # an array's tasks fold into their job
    }
    assert jobs["16"].gpus == 2 and jobs["16"].slots == 2 and jobs["16"].name == "runner"
    assert jobs["16"].start_time is not None
    assert jobs["19"].start_time is None  # its planned start is not a start
    assert jobs["18"].reason == "hold (JobHeldUser)" and jobs["2"].reason == "timeout"


@pytest.mark.parametrize("state, reason, expected", [
    ("RUNNING", "None", RUNNING), ("COMPLETING", "None", RUNNING), ("SUSPENDED", "None", RUNNING),
    ("CONFIGURING", "None", RUNNING), ("PENDING", "Resources", QUEUED),
    ("PENDING", "Priority", QUEUED), ("PENDING", "Dependency", HELD),
    ("PENDING", "DependencyNeverSatisfied", HELD), ("PENDING", "JobHeldAdmin", HELD),
    ("REQUEUE_HOLD", "None", HELD), ("COMPLETED", "None", ENDING), ("OUT_OF_MEMORY", "None", ENDING),
    ("NODE_FAIL", "None", ENDING),
])
def test_states(state, reason, expected):
    assert normalize_state(state, reason)[0] == expected


def test_sacct_killed_at_its_time_limit():
    job = parse_sacct((DATA / "sacct_timeout.txt").read_text(), "2")
    assert (job.state, job.failed, job.reason) == (ENDED, True, "killed at its time limit (--time)")
    assert job.exit_status == 137  # the batch step: SIGKILL, KillWait after the SIGTERM
    assert job.wallclock == 96     # the batch step ran on through KillWait


def test_sacct_cancelled_while_running_and_while_pending():
    job = parse_sacct((DATA / "sacct_cancelled.txt").read_text(), "8")
    assert (job.failed, job.exit_status, job.reason) == (True, 143, "cancelled (scancel)")
    job = parse_sacct((DATA / "sacct_cancelled_pending.txt").read_text(), "9")
    assert (job.failed, job.wallclock, job.gpus) == (True, 0, None)


def test_sacct_completed_with_gpus_and_cpus():
    job = parse_sacct((DATA / "sacct_completed_gpus.txt").read_text(), "7")
    assert (job.failed, job.exit_status, job.gpus, job.slots) == (False, 0, 2, 3)
    assert job.name == "s2_env" and job.start_time and job.end_time


def test_sacct_of_a_running_job_or_nothing_is_none():
    assert parse_sacct((DATA / "sacct_running.txt").read_text(), "16") is None
    assert parse_sacct("", "16") is None
    assert parse_sacct("sacct: error: Problem talking to the database", "16") is None


# ------------------------------------------------------------ profile keys
def write_profile(tmp_path, **keys) -> Path:
    lines = ["scheduler: slurm", "max_gpus: 4"] + [f"{k}: {v}" for k, v in keys.items()]
    path = tmp_path / "p.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("key, value, allowed", [
    ("partition", "'gpu queue'", "letters, digits"),
    ("qos", "[a]", "a quality of service"),
    ("cpus_per_gpu", "0", "a positive integer"),
    ("gpu_type", "A100", "one of gpu_types: a100"),
    ("extra_directives", "['mem=8G']", "each starting with '-'"),
    ("pe", "omp", "allowed keys are"),  # a Grid Engine key
])
def test_bad_profile_values_are_one_line_errors_naming_key_and_allowed(tmp_path, key, value,
                                                                       allowed):
    extra = {"gpu_types": "[a100]"} if key == "gpu_type" else {}
    path = write_profile(tmp_path, **{key: value}, **extra)
    with pytest.raises(UsageError) as error:
        profiles.load(str(path))
    message = str(error.value)
    assert "\n" not in message and key in message and allowed in message


def test_the_shipped_profile_loads():
    profile = profiles.load("slurm")
    assert profile["scheduler"] == "slurm" and profile["partition"] is None


# ------------------------------------------------------------ error paths (stand-ins)
@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}:/usr/bin:/bin")
    return directory


def _stand_in(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def test_no_sbatch_on_path_is_a_usage_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    backend = SlurmBackend()
    with pytest.raises(UsageError, match="sbatch not found on PATH"):
        backend.submit(tmp_path / "s.sh")
    with pytest.raises(UsageError, match="squeue not found"):
        backend.query(["1"])
    assert backend.query([]) == {}  # nothing asked, nothing needed


def test_the_submission_carries_the_dependency_and_the_hold(fake_bin, tmp_path):
    _stand_in(fake_bin, "sbatch", f'echo "$@" > {tmp_path}/args; echo "77;cluster2"')
    assert SlurmBackend().submit(tmp_path / "s.sh", hold_on="76", held=True) == "77"
    assert (tmp_path / "args").read_text().split() == [
        "--parsable", "--dependency=afterany:76", "--hold", str(tmp_path / "s.sh")]


def test_a_refusal_is_final_and_a_busy_controller_is_transient(fake_bin, tmp_path):
    _stand_in(fake_bin, "sbatch", 'echo "sbatch: error: Batch job submission failed: Invalid '
                                  'account or account/partition combination specified" >&2; exit 1')
    with pytest.raises(SchedulerError, match="Invalid account") as refused:
        SlurmBackend().submit(tmp_path / "s.sh")
    assert not refused.value.transient
    for busy in ("sbatch: error: Batch job submission failed: Unable to contact slurm controller "
                 "(connect failure)",
                 "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"):
        _stand_in(fake_bin, "sbatch", f'echo "{busy}" >&2; exit 1')
        with pytest.raises(SchedulerError) as error:
            SlurmBackend().submit(tmp_path / "s.sh")
        assert error.value.transient, busy


def test_sbatch_printing_no_job_id(fake_bin, tmp_path):
    _stand_in(fake_bin, "sbatch", 'echo "Submitted batch job 4"')
    with pytest.raises(SchedulerError, match="not a job id"):
        SlurmBackend().submit(tmp_path / "s.sh")


def test_query_asks_once_with_an_explicit_format(fake_bin, tmp_path):
    _stand_in(fake_bin, "squeue", f'echo "$@" >> {tmp_path}/calls; cat {DATA / "squeue_mixed.txt"}')
    jobs = SlurmBackend().query(["16", "17", "424242"])
    assert [jobs[j].state for j in ("16", "17", "424242")] == [RUNNING, HELD, ENDING]
    (call,) = (tmp_path / "calls").read_text().splitlines()
    assert "-o %i|%T|%r|%S|%C|%b|%j" in call and "-t all" in call


def test_controller_down(fake_bin):
    _stand_in(fake_bin, "squeue", 'echo "slurm_load_jobs error: Socket timed out on send/recv '
                                  'operation" >&2; exit 1')
    with pytest.raises(SchedulerError, match="Socket timed out") as error:
        SlurmBackend().query(["1"])
    assert error.value.transient


def test_scancel_ignores_jobs_already_gone_but_not_other_failures(fake_bin):
    _stand_in(fake_bin, "scancel", 'echo "scancel: error: Kill job error on job id $1: Invalid '
                                   'job id specified" >&2; exit 1')
    SlurmBackend().cancel(["424242"])
    _stand_in(fake_bin, "scancel", 'echo "scancel: error: Unable to contact slurm controller" >&2;'
                                   ' exit 1')
    with pytest.raises(SchedulerError, match="Unable to contact"):
        SlurmBackend().cancel(["1"])
