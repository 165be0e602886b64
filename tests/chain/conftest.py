"""Fixtures for the chain tests.

Unit tests (test_chain_unit.py) run the real hooks against a real run directory (written by
the launcher's own writers) and the real submission path, with the local profile's scheduler
replaced in the backend registry by support.fake_scheduler: the decisions are what is tested there.
The end-to-end tests (test_chain_e2e.py) use the real Grid Engine and the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmjobs import backends, rundir, submit
from support import fake_scheduler, make_run_dir


def launch_with(sched, run_dir: Path, limits: dict) -> str:
    """What `slmjobs launch` does: the run's limits in run.yaml, link 1 submitted unheld."""
    spec = rundir.load_run(run_dir)
    cluster = {**spec["cluster"], "submit_retry_seconds": 4}  # short retries in tests
    rundir.save_run(run_dir, {**spec, "chain": dict(limits), "cluster": cluster})
    return submit.submit_link(run_dir, 1, hold_on=None)


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
    fake = fake_scheduler()
    fake.launch = lambda run_dir: launch_with(fake, run_dir, limits)
    monkeypatch.setitem(backends.REGISTRY, "local", lambda: fake)
    return fake


def write_progress(run_dir: Path, **fields) -> None:
    (run_dir / "progress.json").write_text(json.dumps(fields))
