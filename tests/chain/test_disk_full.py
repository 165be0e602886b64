"""A full disk or quota stops a chain with a reason, for real: the run directory lives on a
small tmpfs mounted here (the test setup runs as root), filled with a real file."""

from __future__ import annotations

import os

import pytest

from slmjobs import chain, events, ledger, monitor, rundir, table
from support import make_run_dir, tmpfs


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "small", "4m") as mount:
        yield mount


def fill(directory, leave: int = 0) -> os.PathLike:
    """A file that takes all the free space of `directory`'s filesystem but `leave` bytes."""
    stat = os.statvfs(directory)
    path = directory / "filler"
    with open(path, "wb") as handle:
        handle.truncate(0)
        try:
            handle.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
            handle.flush()
            os.fsync(handle.fileno())
        except OSError:
            pass
    return path


def a_checkpoint(run_dir, step: int, size: int) -> None:
    folder = run_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    name = f"ep0-ba{step}-rank0.pt"
    (folder / name).write_bytes(b"\1" * size)
    (folder / "latest-rank0.pt").unlink(missing_ok=True)
    os.symlink(name, folder / "latest-rank0.pt")


def test_a_save_that_ran_out_of_space_stops_the_chain_with_the_workers_words(run_dir, sched):
    sched.launch(run_dir)
    job_id = [e["job_id"] for e in ledger.read(run_dir) if e["event"] == "submitted"][0]
    sched.states[job_id] = "running"
    assert chain.begin(run_dir, 1, job_id=job_id) == chain.TRAIN
    rundir.log_path(run_dir, 1).write_text(
        "error: no space left to save a checkpoint to /x/checkpoints/ep0-ba40-rank0.pt: 0 B free "
        "on /x (tmpfs)\n")
    chain.end(run_dir, 1, chain.EXIT_DISK_FULL, job_id=job_id)
    stop = [e for e in ledger.read(run_dir) if e["event"] == "stopped"][-1]
    assert stop["reason"] == "disk_full" and "no space left to save" in stop["detail"]
    successor = [e["job_id"] for e in ledger.read(run_dir) if e["event"] == "submitted"][1]
    assert sched.cancelled == [successor]  # no queue wait only to fail again


def test_a_ledger_that_cannot_be_written_does_not_break_the_hooks_and_status_still_tells(
        small_disk, capsys, monkeypatch):
    from slmjobs import backends
    from slmjobs.backends import Job

    run_dir = make_run_dir(small_disk / "r")
    for event in ({"event": "submitted", "link": 1, "job_id": "1", "hold_on": None},
                  {"event": "started", "link": 1, "job_id": "1"}):
        ledger.append(run_dir, event)
    # the ledger's last page full too (tmpfs allocates pages: an append needs a new one)
    with open(run_dir / "jobs.jsonl", "ab") as handle:
        handle.write(b" " * (-(handle.tell() + 1) % 4096) + b"\n")
    fill(small_disk)
    before = (run_dir / "jobs.jsonl").read_bytes()
    assert chain.main(["end", str(run_dir), "1", "74"]) == 0  # the job script goes on
    err = capsys.readouterr().err
    assert "cannot write the run directory" in err and "No space left on device" in err
    assert (run_dir / "jobs.jsonl").read_bytes() == before
    # the local backend's accounting knows how the job ended; status says so without writing
    accounted = Job(job_id="1", state="ended", exit_status=74)

    class Accounting(backends.REGISTRY["local"]().__class__):
        def query(self, job_ids):
            return {j: accounted for j in job_ids}

        def accounting(self, job_id):
            return accounted

    monkeypatch.setitem(backends.REGISTRY, "local", Accounting)
    row = monitor.run_statuses([run_dir])[0]
    assert (row["state"], row["stop_reason"]) == ("stopped", "disk_full")
    assert "slmjobs resume r" in table.note(row)


def test_resume_refuses_until_there_is_room_for_a_checkpoint(small_disk, monkeypatch):
    from slmjobs.errors import UsageError

    run_dir = make_run_dir(small_disk / "r")
    ledger.append(run_dir, {"event": "stopped", "reason": "disk_full", "detail": "d"})
    a_checkpoint(run_dir, 40, 1 << 20)
    filler = fill(small_disk, leave=512 << 10)
    before = ledger.read(run_dir)
    with pytest.raises(UsageError) as refused:
        chain.resume_run(run_dir)
    message = str(refused.value)
    assert "no room for a checkpoint" in message and "(tmpfs)" in message and str(small_disk) in message
    assert ledger.read(run_dir) == before  # nothing written
    filler.unlink()
    assert rundir.no_room_for_a_checkpoint(run_dir) is None


def test_the_next_link_records_the_stop_a_full_ledger_kept_out(run_dir, sched):
    from slmjobs.backends import Job

    sched.launch(run_dir)
    first = [e["job_id"] for e in ledger.read(run_dir) if e["event"] == "submitted"][0]
    sched.states[first] = "running"
    assert chain.begin(run_dir, 1, job_id=first) == chain.TRAIN
    # the worker exited 74 and `end` could not write: the held successor starts later
    sched.states[first] = "ended"
    sched.accounted[first] = Job(job_id=first, state="ended", exit_status=74)
    second = [e["job_id"] for e in ledger.read(run_dir) if e["event"] == "submitted"][1]
    sched.states[second] = "running"
    assert chain.begin(run_dir, 2, job_id=second) == chain.NOTHING
    stop = [e for e in ledger.read(run_dir) if e["event"] == "stopped"][-1]
    assert stop["reason"] == "disk_full"
    assert sched.pending() == []


@pytest.fixture
def runs_disk(tmp_path):
    """A 16 MB tmpfs for a whole chain: its dataset, runs and checkpoints."""
    with tmpfs(tmp_path / "disk", "16m") as mount:
        yield mount


def test_a_chain_on_a_full_disk_stops_with_disk_full_and_resume_finishes_it(runs_disk,
                                                                          monkeypatch):
    """The runs root fills up after the first checkpoint: the next save fails, the chain stops
    with `disk_full` (shown by status), resume refuses while the disk is full, and once room is
    made, resume finishes the run. On the local backend with the real worker."""
    from chain_support import Campaign, local_profile, prepare_data
    from support import wait_until

    training = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64",
                "train.max_steps=30", "train.global_batch_size=4", "train.eval_every=0",
                "checkpoint.save_every_batches=10", "checkpoint.save_every_seconds=0",
                "checkpoint.keep=2", "data.num_workers=0", "wandb.enabled=false"]
    c = Campaign(runs_disk, prepare_data(runs_disk, documents=20, seq_len=64), training,
                 ["train.debug_batch_sleep=0.5"], 300)  # 5 s between saves, whatever the CPU
    monkeypatch.setenv("SLMJOBS_LOCAL_STATE", c.env["SLMJOBS_LOCAL_STATE"])
    profile = c.profile("disk", local_profile("00:20:00", 60, {"max_links": 5, "crash_budget": 3,
                                                               "no_progress_links": 3}))
    try:
        run_dir = c.launch("full", profile)
        wait_until(lambda: (rundir.read_progress(run_dir).get("checkpoint_step") or 0) >= 10,
                   240, "the first checkpoint", interval=0.2)
        size = (run_dir / "checkpoints" / "ep0-ba10-rank0.pt").stat().st_size
        filler = fill(runs_disk, leave=size // 2)
        evs = c.wait_settled(run_dir)
        assert events.stop_reason(evs) == "disk_full", evs[-3:]
        assert "no space left to save a checkpoint" in events.stop_in_force(evs)["detail"]
        row = c.status("full")
        assert (row["state"], row["stop_reason"]) == ("stopped", "disk_full")
        refused = c.cli("resume", "full", check=False)
        assert refused.returncode == 2 and "no room for a checkpoint" in refused.stderr
        assert events.stop_reason(ledger.read(run_dir)) == "disk_full"  # nothing written
        filler.unlink()
        c.cli("resume", "full")
        evs = c.wait_settled(run_dir)
        assert events.stop_reason(evs) == "finished", evs[-3:]
        assert rundir.read_progress(run_dir)["checkpoint_step"] == 30
    finally:
        c.close()
