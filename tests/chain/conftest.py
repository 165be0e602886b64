"""Fixtures for the chain tests.

Unit tests (test_chain_unit.py) run the real hooks against a real ledger in a temporary run
directory, with the scheduler and the launcher's submission replaced by `FakeScheduler`: the
decisions are what is tested there. The end-to-end tests (test_chain_e2e.py) use the real
Grid Engine and the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmjobs import chain, ledger
from slmjobs.backends import Job


class FakeScheduler:
    """Stands in for the backend and for launch.submit_link; remembers what was asked of it."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.next_id = 100
        self.states: dict[str, str] = {}      # job id -> queued/held/running/ended
        self.accounted: dict[str, Job] = {}   # what accounting() answers
        self.cancelled: list[str] = []
        self.on_submit = None                 # hook: called after a submission is recorded

    # the launcher's seam
    def submit_link(self, run_dir, link, hold_on=None):
        self.next_id += 1
        job_id = str(self.next_id)
        self.states[job_id] = "held" if hold_on else "queued"
        ledger.append(run_dir, {"event": "submitted", "link": link, "job_id": job_id,
                                "script": f"scripts/link-{link:03d}.sh", "hold_on": hold_on})
        if self.on_submit:
            self.on_submit(link, job_id)
        return job_id

    # the backend interface
    def cancel(self, job_ids):
        for job_id in job_ids:
            self.cancelled.append(job_id)
            self.states[job_id] = "ended"

    def query(self, job_ids):
        return {j: Job(job_id=j, state=self.states.get(j, "ended")) for j in job_ids}

    def accounting(self, job_id):
        return self.accounted.get(job_id)

    def pending(self) -> list[str]:
        return sorted(j for j, s in self.states.items() if s in ("queued", "held"))


@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "r1"
    (path / "checkpoints").mkdir(parents=True)
    (path / "jobs.jsonl").touch()
    return path


@pytest.fixture
def limits():
    return {"max_links": 6, "crash_budget": 2, "no_progress_links": 3}


@pytest.fixture
def sched(run_dir, limits, monkeypatch):
    fake = FakeScheduler(run_dir)
    monkeypatch.setattr(chain, "submit_link", fake.submit_link)
    monkeypatch.setattr(chain, "backend_for", lambda _run_dir: fake)
    monkeypatch.setattr(chain, "load_run", lambda _run_dir: {"chain": limits})
    return fake


def write_progress(run_dir: Path, **fields) -> None:
    (run_dir / "progress.json").write_text(json.dumps(fields))
