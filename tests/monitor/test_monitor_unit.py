"""Status logic with a stand-in scheduler in the backend registry (the real one:
test_monitor_real.py). Run directories are written by the launcher's own writers."""

from __future__ import annotations

import io
import json
import time

import pytest
import yaml

from slmjobs import backends as registry, chain, ledger, logs, monitor, rundir, table
from slmjobs.backends import ENDED, ENDING, HELD, QUEUED, RUNNING, Job, SchedulerError
from slmjobs.backends.local import LocalBackend
from slmjobs.backends.sge import SGEBackend
from support import fake_scheduler, make_run_dir


@pytest.fixture
def backends(monkeypatch):
    fakes = {"sge": fake_scheduler(SGEBackend, gone=ENDING),
             "local": fake_scheduler(LocalBackend, gone=ENDING)}
    for kind, fake in fakes.items():
        monkeypatch.setitem(registry.REGISTRY, kind, lambda fake=fake: fake)
    return fakes


def make_run(root, name, scheduler="sge", gpus=2, max_links=5, events=(), progress=None):
    run_dir = make_run_dir(root / name, scheduler, gpus=gpus, max_links=max_links)
    for event in events:
        ledger.append(run_dir, event)
    if progress is not None:
        (run_dir / "progress.json").write_text(json.dumps(progress))
    return run_dir


def submitted(link, job_id, hold_on=None):
    return {"event": "submitted", "link": link, "job_id": job_id, "hold_on": hold_on}


def test_one_query_per_scheduler_for_all_runs(tmp_path, backends):
    runs = [make_run(tmp_path, f"s{i}", events=[submitted(1, str(100 + i))]) for i in range(3)]
    runs += [make_run(tmp_path, f"l{i}", "local", events=[submitted(1, str(i + 1))])
             for i in range(2)]
    for i in range(3):
        backends["sge"].states[str(100 + i)] = Job(job_id=str(100 + i), state=QUEUED)
    rows = monitor.run_statuses(runs)
    assert backends["sge"].queries == [["100", "101", "102"]]
    assert backends["local"].queries == [["1", "2"]]
    assert [r["state"] for r in rows[:3]] == [QUEUED] * 3


def test_accounting_is_asked_once_and_recorded(tmp_path, backends):
    run = make_run(tmp_path, "r", events=[
        submitted(1, "7"), {"event": "started", "link": 1, "job_id": "7"},
        submitted(2, "8", hold_on="7"),
        {"event": "ended", "link": 1, "job_id": "7", "how": "handed_off", "exit_status": 75}])
    sge = backends["sge"]
    sge.states["8"] = Job(job_id="8", state=QUEUED)
    # qacct lags qstat: gone from the queue, not accounted -> ending, nothing recorded
    row = monitor.run_statuses([run])[0]
    assert (row["state"], row["previous_link"]) == (QUEUED, "handed off")
    assert sge.accounting_calls == ["7"]
    assert not [e for e in ledger.read(run) if e["event"] == "accounted"]
    sge.accounted["7"] = Job(job_id="7", state=ENDED, exit_status=75, failed=True,
                            wallclock=1800.0, gpus=2)
    row = monitor.run_statuses([run])[0]
    assert row["gpu_hours"] == pytest.approx(1.0)
    row = monitor.run_statuses([run])[0]
    assert sge.accounting_calls == ["7", "7"]  # never asked again
    assert sge.queries == [["7", "8"], ["7", "8"], ["8"]]  # and no more queried once accounted
    assert row["gpu_hours"] == pytest.approx(1.0)
    assert len([e for e in ledger.read(run) if e["event"] == "accounted"]) == 1


def test_a_job_gone_from_the_queue_and_not_accounted_is_ending(tmp_path, backends):
    run = make_run(tmp_path, "r", events=[submitted(1, "7"),
                                          {"event": "started", "link": 1, "job_id": "7"}])
    row = monitor.run_statuses([run])[0]
    assert (row["state"], row["job_state"]) == (ENDING, ENDING)  # neither finished nor lost


def test_a_run_with_nothing_queued_held_or_running_is_broken(tmp_path, backends):
    run = make_run(tmp_path, "r", events=[
        submitted(1, "7"), {"event": "started", "link": 1, "job_id": "7"},
        {"event": "not_submitted", "link": 2, "reason": "submit_failed", "detail": "qsub: busy"}])
    backends["sge"].accounted["7"] = Job(job_id="7", state=ENDED, exit_status=137, failed=True)
    row = monitor.run_statuses([run])[0]
    assert row["state"] == "broken"
    assert table.note(row) == ("broken: link 2 was never submitted (submit_failed: qsub: busy); "
                               "continue: slmjobs resume r")


def test_long_lost_accounting_is_recorded_once_as_missing(tmp_path, backends):
    old = time.time() - 2 * monitor.ACCOUNTING_PATIENCE_SECONDS
    run = make_run(tmp_path, "r", events=[
        {**submitted(1, "7"), "time": old}, {"event": "started", "link": 1, "job_id": "7",
                                             "time": old},
        {"event": "ended", "link": 1, "job_id": "7", "how": "crashed", "time": old}])
    assert monitor.run_statuses([run])[0]["state"] == "broken"  # and no successor either
    monitor.run_statuses([run])
    assert backends["sge"].accounting_calls == ["7"]


def test_chain_view_running_link_previous_link_eta_and_checkpoint_age(tmp_path, backends):
    now = time.time()
    run = make_run(tmp_path, "r", events=[
        submitted(1, "7"), {"event": "started", "link": 1, "job_id": "7"},
        submitted(2, "8", hold_on="7"),
        {"event": "ended", "link": 1, "job_id": "7", "how": "handed_off", "exit_status": 75},
        {"event": "accounted", "link": 1, "job_id": "7", "wallclock": 3600, "gpus": 2},
        {"event": "started", "link": 2, "job_id": "8"}, submitted(3, "9", hold_on="8")],
        progress={"step": 100, "max_steps": 400, "loss": 3.5, "tokens_per_sec": 1000.0,
                  "steps_per_sec": 2.0, "checkpoint_time": now - 90})
    sge = backends["sge"]
    sge.states["8"] = Job(job_id="8", state=RUNNING, start_time=now - 1800)
    sge.states["9"] = Job(job_id="9", state=HELD)
    row = monitor.run_statuses([run])[0]
    assert (row["link"], row["max_links"], row["job_id"], row["state"]) == (2, 5, "8", RUNNING)
    assert row["previous_link"] == "handed off"
    assert row["eta_seconds"] == pytest.approx(150)
    assert 89 <= row["checkpoint_age_seconds"] < 100
    assert row["gpu_hours"] == pytest.approx(2 + 1, abs=0.01)  # accounted 1 h x 2 + running 0.5 h x 2
    text = table.format_table([row])
    assert "RUN" in text.splitlines()[0] and "2/5" in text and "100/400" in text
    assert "2m30s" in text and "3.500" in text and "handed off" in text


def test_killed_link_without_its_end_hook(tmp_path, backends):
    run = make_run(tmp_path, "r", events=[
        submitted(1, "7"), {"event": "started", "link": 1, "job_id": "7"},
        submitted(2, "8", hold_on="7"),
        {"event": "accounted", "link": 1, "job_id": "7", "exit_status": 137, "failed": True,
         "wallclock": 60}])
    backends["sge"].states["8"] = Job(job_id="8", state=QUEUED)
    row = monitor.run_statuses([run])[0]
    assert (row["state"], row["previous_link"]) == (QUEUED, "killed")


@pytest.mark.parametrize("reason,state,note", [
    ("cancelled", "cancelled", ""), ("finished", "finished", ""),
    ("crash_budget", "failed", "stopped: crash_budget (d); continue: slmjobs resume r"),
    ("max_links", "stopped", "stopped: max_links (d); continue: slmjobs resume r"),
    ("diverged", "stopped", "stopped: diverged (d); lower train.lr in the overrides of its run.yaml "
                            "(the next links read them), then continue: slmjobs resume r")])
def test_stopped_chains(tmp_path, backends, reason, state, note):
    run = make_run(tmp_path, "r", events=[
        submitted(1, "7"), {"event": "stopped", "reason": reason, "detail": "d"}])
    row = monitor.run_statuses([run])[0]
    assert (row["state"], row["stop_reason"]) == (state, reason)
    assert table.note(row) == note
    assert row["eta_seconds"] is None


def test_resumed_clears_the_stop(tmp_path, backends):
    run = make_run(tmp_path, "r", events=[
        submitted(1, "7"), {"event": "stopped", "reason": "cancelled"}, {"event": "resumed"},
        submitted(2, "8")])
    backends["sge"].states["8"] = Job(job_id="8", state=QUEUED)
    row = monitor.run_statuses([run])[0]
    assert (row["state"], row["link"], row["stop_reason"]) == (QUEUED, 2, None)


def test_scheduler_down_shows_unknown_and_still_lists(tmp_path, backends):
    backends["sge"].fail = True
    run = make_run(tmp_path, "r", events=[submitted(1, "7")])
    row = monitor.run_statuses([run])[0]
    assert row["state"] == "unknown" and "unable to contact qmaster" in row["job_reason"]
    assert monitor.is_active(run)  # cannot tell: do not let a launch reuse the name


def test_new_run_and_runs_without_jobs(tmp_path, backends):
    run = make_run(tmp_path, "r")
    row = monitor.run_statuses([run])[0]
    assert row["state"] == "new" and backends["sge"].queries == []
    assert table.format_table([]) == "no runs"
    assert not monitor.is_active(run)


def test_cancel_writes_stopped_first_and_catches_a_late_successor(tmp_path, backends):
    run = make_run(tmp_path, "r", events=[
        submitted(1, "7"), {"event": "started", "link": 1, "job_id": "7"},
        submitted(2, "8", hold_on="7")])
    sge = backends["sge"]
    sge.states.update({"7": Job(job_id="7", state=RUNNING), "8": Job(job_id="8", state=HELD)})

    def late_successor():  # the running link's `begin` submitted link 3 just now
        if "9" not in sge.states and "9" not in sge.cancelled:
            ledger.append(run, submitted(3, "9", hold_on="8"))
            sge.states["9"] = Job(job_id="9", state=HELD)

    sge.on_cancel = late_successor
    assert chain.cancel_run(run) == ["7", "8", "9"]
    events = ledger.read(run)
    first_stop = next(i for i, e in enumerate(events) if e["event"] == "stopped")
    first_end = next(i for i, e in enumerate(events) if e["event"] == "ended")
    assert events[first_stop]["reason"] == "cancelled" and first_stop < first_end
    assert {e["job_id"] for e in events if e["event"] == "ended"} == {"7", "8", "9"}
    assert monitor.run_statuses([run])[0]["state"] == "cancelled"
    assert not monitor.is_active(run)


def test_logs_in_link_order_and_follow_until_settled(tmp_path, backends, monkeypatch):
    run = make_run(tmp_path, "r", events=[submitted(1, "7"), submitted(2, "8")])
    log_dir = run / "logs"
    (log_dir / "link-002.log").write_text("second\n")
    (log_dir / "link-001.log").write_text("first\n")
    out = io.StringIO()
    assert logs.follow_logs(run, follow=False, out=out) == 0
    assert out.getvalue() == "first\nsecond\n"

    sge = backends["sge"]
    sge.accounted["7"] = Job(job_id="7", state=ENDED, exit_status=75)
    sge.states["8"] = Job(job_id="8", state=RUNNING)
    polls = []

    def sleep(_seconds):  # the job writes more, then ends after a few polls
        polls.append(1)
        with open(log_dir / "link-002.log", "a") as handle:
            handle.write(f"more {len(polls)}\n")
        if len(polls) == 3:
            sge.states.pop("8")
            sge.accounted["8"] = Job(job_id="8", state=ENDED, exit_status=0)
            (log_dir / "link-003.log").write_text("third\n")

    monkeypatch.setattr(logs.time, "sleep", sleep)
    out = io.StringIO()
    assert logs.follow_logs(run, follow=True, status_seconds=0.5, out=out) == 0
    assert out.getvalue() == "first\nsecond\nmore 1\nmore 2\nmore 3\nthird\n"


def test_logs_of_something_that_is_not_a_run(tmp_path):
    from slmjobs.errors import UsageError
    with pytest.raises(UsageError, match="not a run directory"):
        logs.follow_logs(tmp_path / "nope")


def test_run_yaml_is_read_through_its_json_digest_until_it_changes(tmp_path, backends,
                                                                   monkeypatch):
    run = make_run(tmp_path, "r", gpus=2)
    parsed = []
    real = rundir.read_run_yaml
    monkeypatch.setattr(rundir, "read_run_yaml", lambda d: parsed.append(d) or real(d))
    (run / rundir.SUMMARY_FILE).unlink()  # as a run from an older slmjobs
    assert monitor.run_statuses([run])[0]["gpus"] == 2
    assert parsed == [run]  # no digest: built from the YAML
    assert (run / rundir.SUMMARY_FILE).exists()
    monkeypatch.setenv("SLMJOBS_CACHE_DIR", str(tmp_path / "cold"))  # no cached rows either
    assert monitor.run_statuses([run])[0]["gpus"] == 2
    assert parsed == [run]  # from the digest
    rundir.atomic_write(run / "run.yaml", yaml.safe_dump(
        {**rundir.load_run(run), "model": "gpt2", "gpus": 4}))  # edited by hand
    row = monitor.run_statuses([run])[0]
    assert (row["gpus"], row["model"], parsed) == (4, "gpt2", [run, run])


def test_a_digest_that_cannot_be_written_only_costs_time(tmp_path, backends):
    run = make_run(tmp_path, "r", gpus=2)
    (run / rundir.SUMMARY_FILE).unlink()
    (run / rundir.SUMMARY_FILE).mkdir()  # in the way, as a read-only run would be (even to root)
    for _ in range(2):
        assert monitor.run_statuses([run])[0]["gpus"] == 2
    assert not list(run.glob(f".{rundir.SUMMARY_FILE}.*"))  # no scratch left behind


def test_cancel_with_the_scheduler_down_tries_and_fails_loudly(tmp_path, backends):
    run = make_run(tmp_path, "r", events=[submitted(1, "7")])
    sge = backends["sge"]
    sge.fail = True

    def qdel_fails():
        raise SchedulerError("qdel 7 failed: unable to contact qmaster")

    sge.on_cancel = qdel_fails
    with pytest.raises(SchedulerError, match="unable to contact qmaster"):
        chain.cancel_run(run)
    assert sge.cancelled == ["7"]
    assert ledger.read(run)[-1]["event"] == "stopped"  # the intent is recorded: no new links


def test_a_starting_link_shows_the_step_the_ledger_knows_and_deleted_successors_are_no_link(
        tmp_path, backends):
    run = make_run(tmp_path, "r", events=[
        submitted(1, "7"), {"event": "started", "link": 1, "job_id": "7"},
        submitted(2, "8", hold_on="7"),
        {"event": "ended", "link": 1, "job_id": "7", "how": "handed_off", "step": 33,
         "checkpoint_step": 33},
        {"event": "started", "link": 2, "job_id": "8"}, submitted(3, "9", hold_on="8"),
        {"event": "stopped", "reason": "cancelled"},
        {"event": "ended", "link": 2, "job_id": "8", "how": "cancelled"},
        {"event": "ended", "link": 3, "job_id": "9", "how": "cancelled"}],
        progress={"state": "starting", "step": 0, "max_steps": 200})
    row = monitor.run_statuses([run])[0]
    assert (row["step"], row["link"], row["state"]) == (33, 2, "cancelled")
    assert row["progress"] == 33  # a ledger from before kinds: `checkpoint_step` still reads
    assert row["previous_link"] == "handed off"


def test_a_link_that_found_the_run_finished_is_not_the_runs_link(tmp_path, backends):
    run = make_run(tmp_path, "r", events=[
        submitted(1, "7"), {"event": "started", "link": 1, "job_id": "7"},
        submitted(2, "8", hold_on="7"),
        {"event": "ended", "link": 1, "job_id": "7", "how": "finished", "exit_status": 0,
         "step": 200, "checkpoint_step": 200},
        {"event": "stopped", "reason": "finished"},
        {"event": "ended", "link": 2, "job_id": "8", "how": "cancelled", "exit_status": None},
        submitted(3, "9"),  # resubmitted by hand after the finish: starts, does nothing
        {"event": "started", "link": 3, "job_id": "9"},
        {"event": "ended", "link": 3, "job_id": "9", "how": "cancelled", "exit_status": 0}],
        progress={"state": "finished", "step": 200, "max_steps": 200, "checkpoint_step": 200})
    row = monitor.run_statuses([run])[0]
    assert (row["link"], row["job_id"], row["state"]) == (1, "7", "finished")


def test_a_settled_run_is_not_reread_until_one_of_its_files_changes(tmp_path, backends,
                                                                    monkeypatch):
    run = make_run(tmp_path, "r", events=[
        submitted(1, "7"), {"event": "started", "link": 1, "job_id": "7"},
        {"event": "ended", "link": 1, "job_id": "7", "how": "finished", "exit_status": 0},
        {"event": "accounted", "link": 1, "job_id": "7", "wallclock": 60, "gpus": 2}],
        progress={"step": 10, "max_steps": 10, "checkpoint_time": time.time() - 100})
    first = monitor.run_statuses([run])[0]
    reads = []
    real = ledger.read
    monkeypatch.setattr(ledger, "read", lambda d: reads.append(d) or real(d))
    time.sleep(0.01)
    again = monitor.run_statuses([run])[0]
    assert reads == [] and backends["sge"].queries == []
    assert again["checkpoint_age_seconds"] > first["checkpoint_age_seconds"]  # still ticks
    assert {k: v for k, v in again.items() if k != "checkpoint_age_seconds"} == \
        {k: v for k, v in first.items() if k != "checkpoint_age_seconds"}
    ledger.append(run, {"event": "resumed"})
    ledger.append(run, submitted(2, "8"))
    backends["sge"].states["8"] = Job(job_id="8", state=QUEUED)
    row = monitor.run_statuses([run])[0]
    assert reads and (row["state"], row["link"]) == (QUEUED, 2)


def test_a_corrupt_run_yaml_is_shown_as_unreadable_and_no_scheduler_is_asked(tmp_path, backends):
    run = make_run(tmp_path, "r", events=[submitted(1, "7")])
    (run / rundir.SUMMARY_FILE).unlink()
    (run / "run.yaml").write_text("{{{ not yaml")
    row = monitor.run_statuses([run])[0]
    assert row["state"] == "unreadable" and "run.yaml" in row["job_reason"]
    assert backends["sge"].queries == [] and backends["local"].queries == []
