"""A third scheduler is one small class in the registry: the chain hooks run under it untouched,
and where it cannot tell a job its own id, `begin` never submits an unheld successor."""

from __future__ import annotations

import pytest

from support import fake_scheduler, train_spec

from slmjobs import backends, chain, launch, ledger, rundir


@pytest.fixture
def third(monkeypatch):
    """The whole backend: a job id from $THIRD_JOB_ID, jobs that stay where tests put them."""
    scheduler = fake_scheduler(job_id_variable="THIRD_JOB_ID")
    monkeypatch.setitem(backends.REGISTRY, "third", lambda: scheduler)
    return scheduler


@pytest.fixture
def third_run(tmp_path, third):
    profile = tmp_path / "third.yaml"
    profile.write_text("scheduler: third\nmax_gpus: 1\nwalltime_max: '01:00:00'\n"
                       "walltime_default: '00:10:00'\nhandoff_margin: 60\n")
    spec = train_spec(cluster=str(profile), name="r3")
    run_dir = tmp_path / "runs" / "r3"
    rundir.create(run_dir, {**spec, "run_dir": str(run_dir)})
    return run_dir


def of_kind(run_dir, kind):
    return [e for e in ledger.read(run_dir) if e["event"] == kind]


def test_the_chain_hooks_run_under_a_third_scheduler(third_run, third, monkeypatch):
    monkeypatch.setenv("THIRD_JOB_ID", "42")
    assert chain.begin(third_run, 1) == chain.TRAIN
    assert third.submitted == ["42"]  # the successor, held on this job
    assert of_kind(third_run, "started")[0]["job_id"] == "42"
    assert chain.end(third_run, 1, 75) == 0
    assert of_kind(third_run, "ended")[0]["job_id"] == "42"
    assert third.submitted == ["42"]  # nothing more: the successor exists


def test_without_its_job_id_begin_submits_no_unheld_successor_and_end_does(third_run, third, monkeypatch,
                                                                          capsys):
    monkeypatch.delenv("THIRD_JOB_ID", raising=False)
    assert chain.begin(third_run, 1) == chain.TRAIN
    assert third.submitted == []  # never two links at once
    (event,) = of_kind(third_run, "not_submitted")
    assert (event["link"], event["reason"]) == (2, "job_id_unknown")
    assert "THIRD_JOB_ID unset" in capsys.readouterr().err
    chain.end(third_run, 1, 75)  # the worker is done: now the successor may be queued
    assert third.submitted == [None]
    assert [e["link"] for e in of_kind(third_run, "submitted")] == [2]
