"""A damaged newest checkpoint: the next link's `begin` sets it aside and the worker resumes
from the newest intact one; with none intact the chain stops instead of crash-looping. Real
checkpoint archives (torch.save), damaged for real (truncated, overwritten)."""

from __future__ import annotations

import os

import pytest

from slmjobs import chain, checkpoints, ledger


def save(folder, step: int) -> None:
    import torch

    name = f"ep0-ba{step}-rank0.pt"
    torch.save({"state": {"step": step, "w": torch.arange(1000.0)}}, folder / name)
    (folder / "latest-rank0.pt").unlink(missing_ok=True)
    os.symlink(name, folder / "latest-rank0.pt")


def truncate(path, keep_bytes: int = 1000) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(keep_bytes)


@pytest.fixture
def saved(run_dir):
    folder = run_dir / "checkpoints"
    for step in (10, 20, 30):
        save(folder, step)
    return folder


def test_intact_checkpoints_pass_and_damaged_ones_are_named(saved):
    assert checkpoints.damage(saved / "ep0-ba30-rank0.pt") is None
    truncate(saved / "ep0-ba30-rank0.pt")
    assert "not a whole checkpoint archive" in checkpoints.damage(saved / "ep0-ba30-rank0.pt")
    (saved / "ep0-ba20-rank0.pt").write_bytes(b"\0" * 4096)  # overwritten
    assert checkpoints.damage(saved / "ep0-ba20-rank0.pt")


def test_the_next_link_sets_the_damaged_newest_aside_and_resumes_from_the_one_before(
        run_dir, sched, saved, capsys):
    truncate(saved / "ep0-ba30-rank0.pt")
    sched.launch(run_dir)
    job_id = [e["job_id"] for e in ledger.read(run_dir) if e["event"] == "submitted"][0]
    sched.states[job_id] = "running"
    assert chain.begin(run_dir, 1, job_id=job_id) == chain.TRAIN
    assert os.readlink(saved / "latest-rank0.pt") == "ep0-ba20-rank0.pt"
    assert (saved / "ep0-ba30-rank0.pt.damaged").exists()  # never deleted
    (aside,) = [e for e in ledger.read(run_dir) if e["event"] == "checkpoint_set_aside"]
    assert (aside["step"], aside["resumes_from"]) == (30, 20)
    assert "ep0-ba30-rank0.pt (step 30) is damaged" in capsys.readouterr().err
    assert chain.Run(run_dir).progress() == 20  # the guards count from what is resumed


def test_a_damaged_only_checkpoint_stops_the_chain_instead_of_crash_looping(run_dir, sched, saved):
    for step in (10, 20):
        (saved / f"ep0-ba{step}-rank0.pt").unlink()
    truncate(saved / "ep0-ba30-rank0.pt")
    sched.launch(run_dir)
    job_id = [e["job_id"] for e in ledger.read(run_dir) if e["event"] == "submitted"][0]
    sched.states[job_id] = "running"
    assert chain.begin(run_dir, 1, job_id=job_id) == chain.NOTHING
    stop = [e for e in ledger.read(run_dir) if e["event"] == "stopped"][-1]
    assert stop["reason"] == "no_intact_checkpoint" and "latest-rank0.pt" in stop["detail"]
    assert sched.pending() == []
