"""The SGE backend against the REAL Grid Engine started by scripts/sge-up.sh."""

from __future__ import annotations

import time

from slmjobs.backends import ENDED, ENDING, HELD, QUEUED, RUNNING
from support import job_script


def state_of(backend, job_id):
    return backend.query([job_id])[job_id].state


def test_job_runs_and_ends_with_its_output_and_exit_status(sge, tmp_path, wait_until):
    script = job_script(tmp_path, "l2_basic", 'echo "job $JOB_ID as $JOB_NAME"; sleep 2; exit 3')
    job_id = sge.submit(script)
    assert job_id.isdigit()
    wait_until(lambda: state_of(sge, job_id) == RUNNING, 20, "the job to run")
    wait_until(lambda: state_of(sge, job_id) == ENDING, 20, "the job to leave qstat")
    job = wait_until(lambda: sge.accounting(job_id), 20, "qacct to have the job")
    assert (job.state, job.exit_status, job.failed) == (ENDED, 3, False)  # its own exit
    assert job.wallclock >= 2 and job.name == "l2_basic"
    assert (tmp_path / "l2_basic.out").read_text() == f"job {job_id} as l2_basic\n"


def test_one_query_answers_for_many_jobs_held_and_queued(sge, tmp_path, wait_until):
    blocker = sge.submit(job_script(tmp_path, "l2_block", "sleep 30"))
    # a start time an hour ahead (-a) keeps a job queued whatever else the cluster runs
    later = time.strftime("%Y%m%d%H%M", time.localtime(time.time() + 3600))
    waiting = sge.submit(job_script(tmp_path, "l2_wait", "true", f"-a {later}"))
    held = sge.submit(job_script(tmp_path, "l2_held", "true"), hold_on=blocker)
    wait_until(lambda: state_of(sge, blocker) == RUNNING, 20, "the blocker to run")
    jobs = sge.query([blocker, waiting, held, "424242"])
    assert [jobs[j].state for j in (blocker, waiting, held)] == [RUNNING, QUEUED, HELD]
    assert jobs["424242"].state == ENDING  # not in the queue: never "finished" by itself

    # cancel a queued job, a held one and a running one
    sge.cancel([waiting, held])
    assert all(job.state == ENDING for job in sge.query([waiting, held]).values())
    sge.cancel([blocker])
    wait_until(lambda: state_of(sge, blocker) == ENDING, 30, "the running job to be deleted")
    killed = wait_until(lambda: sge.accounting(blocker), 20, "qacct of the deleted job")
    assert killed.failed and killed.exit_status == 137
    assert sge.accounting(waiting) is None  # deleted before it ran: no accounting, ever


def test_hold_on_starts_the_successor_after_its_predecessor(sge, tmp_path, wait_until):
    first = sge.submit(job_script(tmp_path, "l2_first", "sleep 3; date +%s.%N"))
    second = sge.submit(job_script(tmp_path, "l2_second", "date +%s.%N"), hold_on=first)
    assert state_of(sge, second) == HELD
    wait_until(lambda: sge.accounting(second), 40, "the successor to run and be accounted")
    first_end = float((tmp_path / "l2_first.out").read_text())
    second_start = float((tmp_path / "l2_second.out").read_text())
    assert second_start > first_end


def test_a_job_submitted_held_starts_only_when_released(sge, tmp_path, wait_until):
    job_id = sge.submit(job_script(tmp_path, "l2_user_held", "echo ran"), held=True)
    assert state_of(sge, job_id) == HELD
    sge.release([job_id])
    job = wait_until(lambda: sge.accounting(job_id), 30, "the released job to run")
    assert job.exit_status == 0 and (tmp_path / "l2_user_held.out").read_text() == "ran\n"


def test_validate_asks_the_scheduler(sge, tmp_path):
    ok, message = sge.validate(job_script(tmp_path, "l2_ok", "true", "-l gpus=2", "-pe omp 2"))
    assert ok, message
    ok, message = sge.validate(job_script(tmp_path, "l2_bad", "true", "-l gpus=99"))
    assert not ok
    assert "gpus" in message and "no suitable queues" in message
