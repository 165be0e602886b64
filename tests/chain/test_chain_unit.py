"""The chain's decisions, driven through the real hooks and the real ledger, with a fake scheduler.

A "link" here is what the job script does: `begin`, the worker (which moves progress.json),
`end` with the worker's exit status. A hard kill is a link that ran `begin` and never `end`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest

from support import make_run_dir, train_spec

from slmjobs import chain, kinds, ledger, rundir, submit
from slmjobs.backends import Job
from slmjobs.errors import UsageError


def set_progress(run_dir, step, state="training", max_steps=100):
    (run_dir / "progress.json").write_text(json.dumps(
        {"state": state, "step": step, "checkpoint_step": step, "max_steps": max_steps}))


def events(run_dir, kind=None):
    return [e for e in ledger.read(run_dir) if kind is None or e["event"] == kind]


def launch(run_dir, sched):
    """What `slmjobs launch` does: submit link 1, not held."""
    return sched.launch(run_dir)


def job_of(run_dir, link):
    return [e["job_id"] for e in events(run_dir, "submitted") if e["link"] == link][-1]


def run_link(run_dir, sched, link, rc, step, killed=False):
    """One link: begin; if it trains, the worker reaches `step`; end with rc (unless killed)."""
    job_id = job_of(run_dir, link)
    sched.states[job_id] = "running"
    verdict = chain.begin(run_dir, link, job_id=job_id)
    if verdict == chain.TRAIN:
        set_progress(run_dir, step, state="finished" if rc == 0 else "training")
        if not killed:
            assert chain.end(run_dir, link, rc, job_id=job_id) == 0
    sched.states[job_id] = "ended"
    return verdict


def test_planned_hand_offs_submit_one_held_successor_per_link(run_dir, sched):
    launch(run_dir, sched)
    assert run_link(run_dir, sched, 1, 75, 30) == chain.TRAIN
    assert run_link(run_dir, sched, 2, 75, 60) == chain.TRAIN
    assert run_link(run_dir, sched, 3, 0, 100) == chain.TRAIN

    submitted = events(run_dir, "submitted")
    assert [(e["link"], e["hold_on"]) for e in submitted] == [
        (1, None), (2, job_of(run_dir, 1)), (3, job_of(run_dir, 2)), (4, job_of(run_dir, 3))]
    ended = {e["link"]: e for e in events(run_dir, "ended")}
    assert [ended[k]["how"] for k in (1, 2, 3, 4)] == ["handed_off", "handed_off", "finished",
                                                        "cancelled"]
    assert [ended[k]["progress"] for k in (1, 2, 3)] == [30, 60, 100]
    assert (run_dir / "DONE").exists()
    assert events(run_dir, "stopped")[-1]["reason"] == "finished"
    assert sched.cancelled == [job_of(run_dir, 4)] and sched.pending() == []


def test_a_link_that_finds_the_run_finished_does_nothing_and_removes_its_successor(run_dir, sched):
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 0, 100)
    late = submit.submit_link(run_dir, 2, hold_on=None)  # e.g. a stray resubmission
    submitted_before = len(events(run_dir, "submitted"))

    assert run_link(run_dir, sched, 2, 75, 100) == chain.NOTHING
    assert len(events(run_dir, "submitted")) == submitted_before
    assert events(run_dir, "ended")[-1] == {**events(run_dir, "ended")[-1], "link": 2,
                                            "job_id": late, "how": "cancelled"}
    assert sched.pending() == []


def test_a_worker_that_finished_but_was_killed_before_end_is_seen_as_finished(run_dir, sched):
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 0, 100, killed=True)  # final checkpoint written, then SIGKILL
    assert run_link(run_dir, sched, 2, 75, 100) == chain.NOTHING
    assert (run_dir / "DONE").exists()
    assert [e["reason"] for e in events(run_dir, "stopped")] == ["finished"]
    assert sched.pending() == []


def test_hard_kill_is_closed_by_the_successor_with_accounting(run_dir, sched):
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 75, 40, killed=True)
    first = job_of(run_dir, 1)
    sched.accounted[first] = Job(job_id=first, state="ended", exit_status=137, failed=True,
                                 reason="37 : qmaster enforced h_rt", wallclock=61.0)

    assert run_link(run_dir, sched, 2, 75, 80) == chain.TRAIN
    killed = [e for e in events(run_dir, "ended") if e["link"] == 1]
    assert len(killed) == 1 and killed[0]["how"] == "killed"
    assert killed[0]["progress"] == 40 and killed[0]["job_id"] == first
    (accounted,) = events(run_dir, "accounted")
    assert accounted["link"] == 1 and accounted["wallclock"] == 61.0
    assert accounted["exit_status"] == 137
    assert sched.pending() == [job_of(run_dir, 3)]  # the chain goes on


def test_accounting_that_lags_is_recorded_by_the_next_end(run_dir, sched):
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 75, 40, killed=True)
    first = job_of(run_dir, 1)
    job_id = job_of(run_dir, 2)
    assert chain.begin(run_dir, 2, job_id=job_id) == chain.TRAIN
    assert events(run_dir, "accounted") == []  # qacct did not have it yet
    sched.accounted[first] = Job(job_id=first, state="ended", exit_status=137, wallclock=62.0)
    chain.end(run_dir, 2, 75, job_id=job_id)
    assert [(e["link"], e["wallclock"]) for e in events(run_dir, "accounted")] == [(1, 62.0)]


def test_lagging_accounting_is_recorded_when_the_last_link_finishes(run_dir, sched):
    """The CI failure of stop 5: the link after a hard kill finished the run, and no later
    `end` was left to ask qacct again."""
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 75, 40, killed=True)
    first = job_of(run_dir, 1)
    job_id = job_of(run_dir, 2)
    assert chain.begin(run_dir, 2, job_id=job_id) == chain.TRAIN
    sched.accounted[first] = Job(job_id=first, state="ended", exit_status=137, wallclock=62.0)
    set_progress(run_dir, 100, state="finished")
    chain.end(run_dir, 2, 0, job_id=job_id)
    assert [(e["link"], e["exit_status"]) for e in events(run_dir, "accounted")] == [(1, 137)]


def test_crash_budget_stops_the_chain_and_leaves_nothing_queued(run_dir, sched, limits):
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 75, 20)      # a planned hand-off: not a crash
    run_link(run_dir, sched, 2, 1, 30)       # crash 1: progress made, the chain goes on
    assert sched.pending() == [job_of(run_dir, 3)]
    run_link(run_dir, sched, 3, 139, 30)     # crash 2 (a segfault) = budget

    (stopped,) = events(run_dir, "stopped")
    assert stopped["reason"] == "crash_budget" and "exit 139" in stopped["detail"]
    assert sched.pending() == [] and sched.cancelled == [job_of(run_dir, 4)]
    assert not (run_dir / "DONE").exists()


def test_hard_kills_do_not_spend_the_crash_budget(run_dir, sched, limits):
    launch(run_dir, sched)
    for link, step in [(1, 10), (2, 20), (3, 30)]:
        assert run_link(run_dir, sched, link, 75, step, killed=True) == chain.TRAIN
    assert events(run_dir, "stopped") == []
    assert [e["how"] for e in events(run_dir, "ended")] == ["killed", "killed"]


def test_no_progress_counts_consecutive_links_without_a_new_checkpoint(run_dir, sched, limits):
    limits["max_links"] = 10
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 75, 10)
    run_link(run_dir, sched, 2, 75, 10)                 # stalled 1
    run_link(run_dir, sched, 3, 75, 20)                 # advanced: the counter restarts
    run_link(run_dir, sched, 4, 75, 20, killed=True)    # stalled 1 (closed as killed by link 5)
    run_link(run_dir, sched, 5, 75, 20)                 # stalled 2
    assert events(run_dir, "stopped") == []
    assert run_link(run_dir, sched, 6, 75, 20) == chain.TRAIN   # stalled 3: stop at its end
    (stopped,) = events(run_dir, "stopped")
    assert stopped["reason"] == "no_progress"
    assert sched.pending() == []


def test_max_links_stops_after_the_last_allowed_link(run_dir, sched, limits):
    limits["max_links"] = 2
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 75, 10)
    run_link(run_dir, sched, 2, 75, 20)
    (stopped,) = events(run_dir, "stopped")
    assert stopped["reason"] == "max_links"
    assert sched.pending() == [] and len(sched.cancelled) == 1


def test_max_links_holds_when_the_last_allowed_link_is_killed(run_dir, sched, limits):
    limits["max_links"] = 2
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 75, 10)
    run_link(run_dir, sched, 2, 75, 20, killed=True)   # its end never ran: link 3 was held
    assert run_link(run_dir, sched, 3, 75, 30) == chain.NOTHING
    assert [e["reason"] for e in events(run_dir, "stopped")] == ["max_links"]
    assert len(events(run_dir, "submitted")) == 3 and sched.pending() == []


def test_a_cancelled_chain_does_not_train(run_dir, sched):
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 75, 10)
    ledger.append(run_dir, {"event": "stopped", "reason": "cancelled", "detail": "by user"})
    assert run_link(run_dir, sched, 2, 75, 20) == chain.NOTHING
    assert sched.pending() == []
    assert len(events(run_dir, "submitted")) == 2


def test_a_cancel_racing_the_successor_submission_removes_the_successor(run_dir, sched):
    launch(run_dir, sched)

    def cancel_lands_now(job_id):  # `slmjobs cancel` listed the jobs a moment earlier
        ledger.append(run_dir, {"event": "stopped", "reason": "cancelled"})

    sched.on_submit = cancel_lands_now
    assert run_link(run_dir, sched, 1, 75, 10) == chain.NOTHING
    assert sched.cancelled == [job_of(run_dir, 2)] and sched.pending() == []


def test_a_rerun_of_the_same_job_does_not_submit_a_second_successor(run_dir, sched):
    launch(run_dir, sched)
    job_id = job_of(run_dir, 1)
    assert chain.begin(run_dir, 1, job_id=job_id) == chain.TRAIN
    assert chain.begin(run_dir, 1, job_id=job_id) == chain.TRAIN  # SGE restarted the job
    assert [e["link"] for e in events(run_dir, "submitted")] == [1, 2]


def test_resume_resets_the_guards_and_submits_the_next_link(run_dir, sched, limits):
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 1, 10)
    run_link(run_dir, sched, 2, 1, 10)
    assert events(run_dir, "stopped")[-1]["reason"] == "crash_budget"

    job_id = chain.resume_run(run_dir)
    (resumed,) = events(run_dir, "resumed")
    assert resumed["progress"] == 10 and resumed["link"] == 4  # link 3 was cancelled
    assert job_of(run_dir, 4) == job_id and events(run_dir, "submitted")[-1]["hold_on"] is None
    assert run_link(run_dir, sched, 4, 1, 10) == chain.TRAIN  # one crash: budget is fresh
    assert sched.pending() == [job_of(run_dir, 5)]
    run_link(run_dir, sched, 5, 0, 100)
    assert (run_dir / "DONE").exists() and sched.pending() == []


def test_resume_refuses_a_finished_run_and_an_active_chain(run_dir, sched):
    launch(run_dir, sched)
    with pytest.raises(UsageError, match="still active"):
        chain.resume_run(run_dir)
    run_link(run_dir, sched, 1, 0, 100)
    with pytest.raises(UsageError, match="already finished"):
        chain.resume_run(run_dir)
    assert events(run_dir, "resumed") == []


def test_resume_waits_for_a_job_that_recorded_its_end_to_leave_the_queue(run_dir, sched,
                                                                          monkeypatch):
    """A link stopped by a guard records its end, then its shell still has to exit: resume
    right then waits for it instead of asking for a cancel. One that never leaves is refused."""
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 1, 10)
    run_link(run_dir, sched, 2, 1, 10)
    assert events(run_dir, "stopped")[-1]["reason"] == "crash_budget"
    exiting = job_of(run_dir, 2)
    sched.states[exiting] = "running"
    leaves = threading.Timer(1.0, sched.states.__setitem__, (exiting, "ended"))
    leaves.start()
    chain.resume_run(run_dir)
    leaves.join()
    assert events(run_dir, "resumed")[-1]["link"] == 4

    monkeypatch.setattr(chain, "EXITING_WAIT", 0.5)
    ledger.append(run_dir, {"event": "stopped", "reason": "cancelled"})
    sched.states[job_of(run_dir, 4)] = "running"  # no `ended` for link 4: a live link
    with pytest.raises(UsageError, match="still active"):
        chain.resume_run(run_dir)


def test_resume_changes_the_walltime_of_the_next_links(run_dir, sched):
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 75, 10)
    ledger.append(run_dir, {"event": "stopped", "reason": "cancelled"})
    sched.cancel([job_of(run_dir, 2)])
    chain.resume_run(run_dir, walltime="2:00:00")
    assert events(run_dir, "resumed")[0]["walltime"] == "02:00:00"
    assert rundir.load_run(run_dir)["walltime"] == "02:00:00"
    assert "#$ -l h_rt=02:00:00" in rundir.script_path(run_dir, 3).read_text()


def test_a_training_runs_progress_is_the_checkpoint_latest_points_at(run_dir):
    train = kinds.by_name("train")
    assert train.durable_progress(run_dir) is None
    set_progress(run_dir, 140)
    assert train.durable_progress(run_dir) == 140  # the heartbeat, while there is no link
    os.symlink("ep0-ba120-rank0.pt", run_dir / "checkpoints" / "latest-rank0.pt")
    assert train.durable_progress(run_dir) == 120  # what the next link resumes from


class OneJob(kinds.Kind):
    """A kind whose one job does all its work (an evaluation): no successor."""
    name = __name__
    chains = False

    def command(self, spec):
        return kinds.Command('"$SLMJOBS_PYTHON" -c pass')


KIND = OneJob()  # this test module is the kind's module: run.yaml's `kind` names it


def test_a_kind_that_does_not_chain_never_submits_a_successor(run_dir, sched):
    spec = rundir.load_run(run_dir)
    rundir.save_run(run_dir, {**spec, "kind": __name__})
    job_id = submit_first(run_dir)
    assert chain.begin(run_dir, 1, job_id=job_id) == chain.TRAIN
    set_progress(run_dir, 5, state="finished")
    chain.end(run_dir, 1, 0, job_id=job_id)
    assert [e["link"] for e in events(run_dir, "submitted")] == [1]
    assert events(run_dir, "stopped")[-1]["reason"] == "finished"


def submit_first(run_dir):
    from slmjobs import submit

    return submit.submit_link(run_dir, 1)


@pytest.mark.parametrize("rc, how", [(0, "finished"), (75, "handed_off"), (1, "crashed"),
                                     (2, "crashed"), (137, "killed"), (139, "crashed"),
                                     (143, "killed")])
def test_exit_status_meaning(rc, how):
    assert chain.how_it_ended(rc) == how


def test_limits_come_from_launch_over_the_profile_over_defaults(tmp_path):
    from slmjobs.profiles import CHAIN_DEFAULTS

    profile = tmp_path / "p.yaml"
    profile.write_text("scheduler: local\nmax_gpus: 1\nwalltime_default: '01:00:00'\n"
                       "walltime_max: '02:00:00'\nhandoff_margin: 60\n"
                       "chain: {max_links: 9, crash_budget: 5}\n")
    spec = train_spec(cluster=str(profile), name="r", max_links=4)
    assert spec["chain"] == {**CHAIN_DEFAULTS, "max_links": 4, "crash_budget": 5}


def test_hooks_refuse_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert chain.main(["begin", str(tmp_path), "1"]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        chain.main(["end", str(tmp_path), "1", "notanumber"])
    assert exc.value.code == 2


def test_hooks_refuse_a_copied_run_directory(run_dir, sched, tmp_path, capsys):
    launch(run_dir, sched)
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = events(copy)
    assert chain.main(["end", str(copy), "1", "75"]) == 2
    assert f"copy of run {run_dir}" in capsys.readouterr().err
    assert events(copy) == before and list(sched.states) == [job_of(run_dir, 1)]


# ------------------------------------------------------------------ a busy scheduler
BUSY = "qsub failed (exit 1): error: commlib error: got select error (Connection refused)"


def busy():
    from slmjobs.backends import SchedulerError

    return SchedulerError(BUSY, transient=True)


def test_a_busy_scheduler_is_asked_again_until_it_answers(run_dir, sched, capsys):
    launch(run_dir, sched)
    sched.failures = [busy(), busy()]
    assert run_link(run_dir, sched, 1, 75, 10) == chain.TRAIN
    assert sched.attempts == 4  # link 1, then link 2 on the third try
    assert "asking again" in capsys.readouterr().err
    assert [e["link"] for e in events(run_dir, "submitted")] == [1, 2]
    assert events(run_dir, "not_submitted") == [] and events(run_dir, "stopped") == []


def test_a_refused_request_is_not_retried(run_dir, sched):
    from slmjobs.backends import SchedulerError

    launch(run_dir, sched)
    sched.failures = [SchedulerError("qsub failed (exit 1): Unable to run job: project denied")]
    job_id = job_of(run_dir, 1)
    assert chain.begin(run_dir, 1, job_id=job_id) == chain.TRAIN
    assert sched.attempts == 2  # no second try
    (missing,) = events(run_dir, "not_submitted")
    assert (missing["link"], missing["reason"]) == (2, "submit_failed")
    assert "project denied" in missing["detail"]


def test_a_successor_begin_could_not_submit_is_submitted_by_end(run_dir, sched):
    launch(run_dir, sched)
    sched.failures = [busy()] * 20  # down for the whole of begin's retries
    job_id = job_of(run_dir, 1)
    assert chain.begin(run_dir, 1, job_id=job_id) == chain.TRAIN
    assert [e["reason"] for e in events(run_dir, "not_submitted")] == ["submit_failed"]
    sched.failures = []  # back up before the worker is done
    set_progress(run_dir, 10)
    chain.end(run_dir, 1, 75, job_id=job_id)
    assert [(e["link"], e["hold_on"]) for e in events(run_dir, "submitted")] == \
        [(1, None), (2, job_id)]
    assert events(run_dir, "stopped") == []


def test_a_scheduler_down_for_good_stops_the_chain_with_its_own_message(run_dir, sched, capsys):
    launch(run_dir, sched)
    sched.failures = [busy()] * 40
    job_id = job_of(run_dir, 1)
    chain.begin(run_dir, 1, job_id=job_id)
    set_progress(run_dir, 10)
    chain.end(run_dir, 1, 75, job_id=job_id)
    (stopped,) = events(run_dir, "stopped")
    assert stopped["reason"] == "submit_failed" and "Connection refused" in stopped["detail"]
    assert "slmjobs resume r1" in capsys.readouterr().err
    sched.failures = []
    sched.cancel([job_id])
    new_job = chain.resume_run(run_dir)  # once the scheduler is back
    assert job_of(run_dir, 2) == new_job


# ------------------------------------------------------------------ what the worker said
def test_a_bad_configuration_stops_the_chain_at_once_with_the_workers_words(run_dir, sched):
    launch(run_dir, sched)
    rundir.log_path(run_dir, 1).write_text(
        "slmjobs: run r1 link 1 ...\nerror: data.path=gone: no prepared dataset (shards) at "
        "/data/gone; allowed is a directory written by slmjobs prepare\n")
    assert run_link(run_dir, sched, 1, 2, 0) == chain.TRAIN
    (stopped,) = events(run_dir, "stopped")
    assert stopped["reason"] == "bad_config"
    assert stopped["detail"].startswith("data.path=gone: no prepared dataset")
    assert sched.pending() == [] and sched.cancelled == [job_of(run_dir, 2)]


def test_a_worker_killed_by_the_oom_killer_is_killed_not_crashed(run_dir, sched, limits):
    launch(run_dir, sched)
    for link in (1, 2, 3):  # more kills than the crash budget, each with progress
        assert run_link(run_dir, sched, link, 137, 10 * link) == chain.TRAIN
    assert [e["how"] for e in events(run_dir, "ended")] == ["killed"] * 3
    assert events(run_dir, "stopped") == []


def test_a_ledger_and_run_yaml_from_before_kinds_still_read_and_resume(run_dir, sched):
    """run.yaml without kind/cpus/then/after, `ended`/`resumed` with `checkpoint_step`: status
    shows the same progress, the guards count it, resume continues it."""
    from slmjobs import monitor

    spec = rundir.load_run(run_dir)
    old = {k: v for k, v in spec.items() if k not in ("kind", "cpus", "then", "after")}
    rundir.save_run(run_dir, old)
    ledger.append(run_dir, {"event": "submitted", "link": 1, "job_id": "7", "script": "s", "hold_on": None})
    for link, job in ((1, "7"), (2, "8"), (3, "9")):
        if link > 1:
            ledger.append(run_dir, {"event": "submitted", "link": link, "job_id": job,
                                    "script": "s", "hold_on": str(int(job) - 1)})
        ledger.append(run_dir, {"event": "started", "link": link, "job_id": job, "host": "h"})
        ledger.append(run_dir, {"event": "ended", "link": link, "job_id": job, "how": "handed_off",
                                "exit_status": 75, "checkpoint_step": 30, "step": 30})
    set_progress(run_dir, 30)
    from slmjobs.events import guard_verdict

    assert guard_verdict(events(run_dir), {"max_links": 9, "crash_budget": 3,
                                                  "no_progress_links": 2})[0] == "no_progress"
    ledger.append(run_dir, {"event": "stopped", "reason": "cancelled", "detail": "slmjobs cancel"})
    (row,) = monitor.run_statuses([run_dir])
    assert (row["kind"], row["progress"], row["step"], row["state"]) == ("train", 30, 30, "cancelled")
    chain.resume_run(run_dir)
    (resumed,) = events(run_dir, "resumed")
    assert (resumed["progress"], resumed["link"], resumed["previous_stop"]) == (30, 4, "cancelled")
    assert job_of(run_dir, 4) in sched.pending()


def test_resume_refuses_while_the_recorded_stops_cause_is_still_there(run_dir, sched, tmp_path):
    """bad_config: the kind's launch-time checks again (here: the dataset still missing);
    no_intact_checkpoint: still none that is whole. One line, nothing submitted; once the
    cause is gone, resume goes on."""
    from trainer.dataset_format import DATASET_FILE, FORMAT_VERSION

    data = tmp_path / "later-data"
    spec = rundir.load_run(run_dir)
    rundir.save_run(run_dir, {**spec, "overrides": [f"data.path={data}", "model.block_size=32"]})
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 2, 0)  # the worker: exit 2, its dataset is gone
    assert events(run_dir, "stopped")[-1]["reason"] == "bad_config"
    submitted = len(events(run_dir, "submitted"))
    with pytest.raises(UsageError, match=str(data)) as refused:
        chain.resume_run(run_dir)
    assert "\n" not in str(refused.value) and len(events(run_dir, "submitted")) == submitted
    for split in ("train", "val"):  # the dataset is back (what trainer.prepare leaves)
        (data / split).mkdir(parents=True)
        (data / split / "index.json").write_text('{"shards": []}')
    (data / DATASET_FILE).write_text(json.dumps({
        "format": FORMAT_VERSION, "tokenizer": {"kind": "bytes", "vocab_size": 257, "eos_id": 256},
        "seq_len": 32, "window": 33, "bytes_per_token": 1.0,
        "splits": {"train": {"windows": 100}, "val": {"windows": 4}}}))
    chain.resume_run(run_dir)
    assert events(run_dir, "resumed")[-1]["previous_stop"] == "bad_config"


def test_resume_refuses_while_no_checkpoint_is_whole(run_dir, sched):
    folder = run_dir / "checkpoints"
    (folder / "ep0-ba10-rank0.pt").write_bytes(b"PK\x03\x04 not a whole archive")
    os.symlink("ep0-ba10-rank0.pt", folder / "latest-rank0.pt")
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 75, 10)  # begin finds it damaged: the chain stops
    assert events(run_dir, "stopped")[-1]["reason"] == "no_intact_checkpoint"
    with pytest.raises(UsageError, match="still no intact checkpoint"):
        chain.resume_run(run_dir)
    (folder / "latest-rank0.pt").unlink()  # what the message says: start the training over
    chain.resume_run(run_dir)
    assert events(run_dir, "resumed")[-1]["previous_stop"] == "no_intact_checkpoint"


def test_a_waiting_run_started_by_the_end_of_another_says_so_on_stderr_only(run_dir, sched, tmp_path,
                                                                          capsys):
    """The `then:` actions also run inside `slmjobs status` (a run killed before its end hook),
    whose stdout is the table or its --json: their notices never go there."""
    from slmjobs import over
    waiting = make_run_dir(tmp_path / "r2")
    assert over.wait_for(run_dir, waiting) is None  # r1 has not finished: nothing submitted yet
    launch(run_dir, sched)
    run_link(run_dir, sched, 1, 0, 100)
    assert [e["link"] for e in events(waiting, "submitted")] == [1]
    said = capsys.readouterr()
    assert "started: link 1 submitted" in said.err
    assert "started" not in said.out
