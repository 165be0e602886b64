"""The SLURM backend against the REAL slurmctld started by scripts/slurm-up.sh (the same checks
as test_sge_real.py, and what SLURM does at a job's time limit)."""

from __future__ import annotations

from slmjobs.backends import ENDED, ENDING, HELD, QUEUED, RUNNING
from support import sbatch_script


def state_of(backend, job_id):
    return backend.query([job_id])[job_id].state


def test_job_runs_and_ends_with_its_output_and_exit_status(slurm, tmp_path, wait_until):
    script = sbatch_script(tmp_path, "s2_basic", 'echo "job $SLURM_JOB_ID as $SLURM_JOB_NAME"; '
                                                 'sleep 2; exit 3')
    job_id = slurm.submit(script)
    assert job_id.isdigit()
    wait_until(lambda: state_of(slurm, job_id) == RUNNING, 20, "the job to run")
    assert slurm.query([job_id])[job_id].name == "s2_basic"
    wait_until(lambda: state_of(slurm, job_id) == ENDING, 20, "the job to leave the queue")
    job = wait_until(lambda: slurm.accounting(job_id), 20, "sacct to have the job")
    assert (job.state, job.exit_status, job.failed) == (ENDED, 3, False)  # its own exit
    assert job.wallclock >= 2
    assert job.name in ("s2_basic", "")  # "": sacct's placeholder name for a moment
    assert (tmp_path / "s2_basic.out").read_text() == f"job {job_id} as s2_basic\n"


def test_the_job_sees_its_id_its_cpus_and_its_gpus(slurm, tmp_path, wait_until):
    script = sbatch_script(tmp_path, "s2_env", "env", "--cpus-per-task=3", "--gres=gpu:2")
    job_id = slurm.submit(script)
    job = wait_until(lambda: slurm.accounting(job_id), 30, "the job to end")
    environ = dict(line.split("=", 1) for line in
                   (tmp_path / "s2_env.out").read_text().splitlines() if "=" in line)
    assert slurm.current_job_id(environ) == job_id
    assert environ[slurm.SLOTS_VARIABLE] == "3"  # the CPUs the job script hands on
    assert environ["CUDA_VISIBLE_DEVICES"] == "0,1"  # the fake GPUs of the test cluster
    assert (job.slots, job.gpus) == (3, 2)


def test_one_query_answers_for_many_jobs_held_and_queued(slurm, tmp_path, wait_until):
    started = tmp_path / "blocker-started"
    blocker = slurm.submit(sbatch_script(tmp_path, "s2_block", f"touch {started}; sleep 30"))
    # a start time an hour ahead keeps a job queued whatever else the cluster runs
    waiting = slurm.submit(sbatch_script(tmp_path, "s2_wait", "true", "--begin=now+3600"))
    held = slurm.submit(sbatch_script(tmp_path, "s2_held", "true"), hold_on=blocker)
    # squeue says R a moment before the batch script runs; a cancel then is no SIGTERM to it
    wait_until(started.exists, 60, "the blocker's script to start")
    jobs = slurm.query([blocker, waiting, held, "424242"])
    assert [jobs[j].state for j in (blocker, waiting, held)] == [RUNNING, QUEUED, HELD]
    assert jobs["424242"].state == ENDING  # not in the queue: never "finished" by itself

    # cancel a queued job, a held one and a running one
    slurm.cancel([waiting, held])
    assert all(job.state == ENDING for job in slurm.query([waiting, held]).values())
    slurm.cancel([blocker])
    wait_until(lambda: state_of(slurm, blocker) == ENDING, 60, "the running job to be cancelled")
    killed = wait_until(lambda: slurm.accounting(blocker), 20, "sacct of the cancelled job")
    assert killed.failed and killed.exit_status == 128 + 15  # scancel: SIGTERM
    never_ran = wait_until(lambda: slurm.accounting(waiting), 20, "sacct of the queued job")
    assert never_ran.failed and not never_ran.wallclock
    slurm.cancel([blocker, "424242"])  # already gone, or never there: not an error


def test_hold_on_starts_the_successor_after_its_predecessor_however_it_ends(slurm, tmp_path,
                                                                           wait_until):
    first = slurm.submit(sbatch_script(tmp_path, "s2_first", "sleep 3; date +%s.%N; exit 1"))
    second = slurm.submit(sbatch_script(tmp_path, "s2_second", "date +%s.%N"), hold_on=first)
    assert state_of(slurm, second) == HELD
    wait_until(lambda: slurm.accounting(second), 40, "the successor to run and be accounted")
    assert slurm.accounting(first).exit_status == 1  # afterany: a failed predecessor too
    first_end = float((tmp_path / "s2_first.out").read_text())
    second_start = float((tmp_path / "s2_second.out").read_text())
    assert second_start > first_end


def test_a_job_submitted_held_starts_only_when_released(slurm, tmp_path, wait_until):
    job_id = slurm.submit(sbatch_script(tmp_path, "s2_user_held", "echo ran"), held=True)
    assert state_of(slurm, job_id) == HELD
    assert "JobHeldUser" in slurm.query([job_id])[job_id].reason
    slurm.release([job_id])
    job = wait_until(lambda: slurm.accounting(job_id), 30, "the released job to run")
    assert job.exit_status == 0 and (tmp_path / "s2_user_held.out").read_text() == "ran\n"


def test_a_job_released_after_another_still_waits_for_it(slurm, tmp_path, wait_until):
    blocker = slurm.submit(sbatch_script(tmp_path, "s2_rel_block", "sleep 4; date +%s.%N"))
    job_id = slurm.submit(sbatch_script(tmp_path, "s2_rel_after", "date +%s.%N"), held=True)
    wait_until(lambda: state_of(slurm, blocker) == RUNNING, 20, "the blocker to run")
    slurm.release([job_id], after=blocker)
    # (pending with reason None until slurmctld's next pass names the dependency: what shows
    # is the order the two ran in)
    wait_until(lambda: slurm.accounting(job_id), 40, "the released job to run after the blocker")
    assert float((tmp_path / "s2_rel_after.out").read_text()) > \
        float((tmp_path / "s2_rel_block.out").read_text())


def test_validate_asks_the_scheduler(slurm, tmp_path):
    ok, message = slurm.validate(sbatch_script(tmp_path, "s2_ok", "true", "--gres=gpu:2",
                                               "--cpus-per-task=2"))
    assert ok, message
    ok, message = slurm.validate(sbatch_script(tmp_path, "s2_bad", "true", "--gres=gpu:99"))
    assert not ok
    assert "node configuration is not available" in message


# What SLURM does at --time (docs/SLURM.md): every process of the job gets SIGTERM, and SIGKILL
# KillWait (30 s) later. The job script's wrapper ignores TERM, as base.sh.j2 does; a child
# that only notes the signal is killed.
SIGNAL_LOGGER = """trap '' USR1 USR2 TERM
python3 -c '
import signal, sys, time
def note(signum, frame):
    print("got", signal.Signals(signum).name, flush=True)
signal.signal(signal.SIGTERM, note)
print("started", flush=True)
while True:
    time.sleep(0.2)
' &
wait $!
echo "the wrapper outlived its worker"
"""


def test_at_its_time_limit_a_job_gets_sigterm_then_sigkill(slurm, tmp_path, wait_until):
    job_id = slurm.submit(sbatch_script(tmp_path, "s2_limit", SIGNAL_LOGGER, "--time=00:01:00"))
    job = wait_until(lambda: slurm.accounting(job_id), 180, "the job to reach its time limit",
                     interval=2.0)
    assert job.failed and "time limit" in job.reason
    wait_until(lambda: state_of(slurm, job_id) == ENDING, 120, "the job's processes to be killed",
               interval=2.0)
    job = slurm.accounting(job_id)
    assert job.exit_status == 128 + 9  # SIGKILL after KillWait, to the wrapper as well
    assert job.wallclock >= 60 + 30
    output = (tmp_path / "s2_limit.out").read_text()
    assert "got SIGTERM" in output and "DUE TO TIME LIMIT" in output
    assert "the wrapper outlived its worker" not in output
