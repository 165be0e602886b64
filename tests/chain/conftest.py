"""Fixtures for the chain tests.

Unit tests (test_chain_unit.py) run the real hooks against a real run directory (written by
the launcher's own writers) and the real submission path, with the local profile's scheduler
replaced in the backend registry by `FakeScheduler`: the decisions are what is tested there.
The end-to-end tests (test_chain_e2e.py) use the real Grid Engine and the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmjobs import backends, rundir, submit
from slmjobs.backends import Backend, Job
from support import make_run_dir


class FakeScheduler(Backend):
    """A backend that remembers what was asked of it; jobs move only when a test says so."""

    kind = "fake"

    def __init__(self, run_dir: Path, limits: dict):
        self.run_dir = run_dir
        self.limits = limits                  # written to run.yaml at launch (tests edit them)
        self.next_id = 100
        self.states: dict[str, str] = {}      # job id -> queued/held/running/ended
        self.accounted: dict[str, Job] = {}   # what accounting() answers
        self.cancelled: list[str] = []
        self.on_submit = None                 # hook: called as a job is submitted
        self.failures: list[Exception] = []   # raised by the next submissions, in order
        self.attempts = 0

    def submit(self, script, hold_on=None):
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        self.next_id += 1
        job_id = str(self.next_id)
        self.states[job_id] = "held" if hold_on else "queued"
        if self.on_submit:
            self.on_submit(job_id)
        return job_id

    def cancel(self, job_ids):
        for job_id in job_ids:
            self.cancelled.append(job_id)
            self.states[job_id] = "ended"

    def query(self, job_ids):
        return {j: Job(job_id=j, state=self.states.get(j, "ended")) for j in job_ids}

    def accounting(self, job_id):
        return self.accounted.get(job_id)

    # for the tests
    def submit_link(self, run_dir, link, hold_on=None):
        return submit.submit_link(run_dir, link, hold_on=hold_on)

    def launch(self, run_dir):
        """What `slmjobs launch` does: the run's limits in run.yaml, link 1 submitted unheld."""
        spec = rundir.load_run(run_dir)
        cluster = {**spec["cluster"], "submit_retry_seconds": 4}  # short retries in tests
        rundir.save_run(run_dir, {**spec, "chain": dict(self.limits), "cluster": cluster})
        return self.submit_link(run_dir, 1, hold_on=None)

    def pending(self) -> list[str]:
        return sorted(j for j, s in self.states.items() if s in ("queued", "held"))


@pytest.fixture
def run_dir(tmp_path):
    path = make_run_dir(tmp_path / "r1")
    (path / "checkpoints").mkdir()
    return path


@pytest.fixture
def limits():
    return {"max_links": 6, "crash_budget": 2, "no_progress_links": 3}


@pytest.fixture
def sched(run_dir, limits, monkeypatch):
    fake = FakeScheduler(run_dir, limits)
    monkeypatch.setitem(backends.REGISTRY, "local", lambda: fake)
    return fake


def write_progress(run_dir: Path, **fields) -> None:
    (run_dir / "progress.json").write_text(json.dumps(fields))
