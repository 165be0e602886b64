"""Fixtures for the launcher tests (profiles, rendering, launch, CLI).

Every test gets an isolated user config dir, runs root and local-backend state dir, and a
fixed USER/HOME, so nothing leaks in from the machine's own ~/.config/slmjobs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    config = tmp_path / "config"
    runs = tmp_path / "runs"
    (config / "clusters").mkdir(parents=True)
    (config / "templates").mkdir()
    runs.mkdir()
    monkeypatch.setenv("SLMJOBS_CONFIG_DIR", str(config))
    monkeypatch.setenv("SLMJOBS_RUNS_ROOT", str(runs))
    monkeypatch.setenv("SLMJOBS_LOCAL_STATE", str(tmp_path / "local-state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SLMJOBS_CACHE_DIR", str(tmp_path / "cache" / "slmjobs"))
    monkeypatch.setenv("USER", "tester")
    for name in ("SLMJOBS_CLUSTER", "SLMJOBS_PROJECT", "SLMJOBS_DATA_ROOT"):
        monkeypatch.delenv(name, raising=False)
    return {"config": config, "runs": runs}


@pytest.fixture(autouse=True)
def no_job_left_behind(isolated):
    """After each test, delete whatever a run under the test's runs root still has queued,
    held or running (a failed assertion must not leave jobs on the shared cluster)."""
    yield
    from slmjobs import ledger
    from slmjobs.backends import ACTIVE_STATES, get_backend
    from slmjobs.rundir import load_run

    for run_dir in isolated["runs"].iterdir():
        ids = [e["job_id"] for e in ledger.read(run_dir) if e.get("event") == "submitted"]
        if not ids:
            continue
        backend = get_backend(load_run(run_dir)["cluster"]["scheduler"])
        left = [j for j, job in backend.query(ids).items() if job.state in ACTIVE_STATES]
        if left:
            backend.cancel(left)


@pytest.fixture
def runs_root(isolated) -> Path:
    return isolated["runs"]


@pytest.fixture
def qsub_spy(tmp_path):
    """A PATH dir whose qsub records that it was called (and fails): proves nothing was submitted."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "qsub").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/qsub-called\n'
                               'echo "Unable to run job: shim refuses" >&2\nexit 1\n')
    (shim / "qsub").chmod(0o755)
    return {"PATH": f"{shim}:{os.environ['PATH']}", "called": tmp_path / "qsub-called"}


@pytest.fixture
def config_dir(isolated) -> Path:
    return isolated["config"]


def cli(*args, env=None, cwd=None, timeout=60):
    """Run the real `slmjobs` command (python -m slmjobs) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "slmjobs", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)


@pytest.fixture
def run_cli():
    return cli


@pytest.fixture(scope="session")
def prepared_data_root(tmp_path_factory) -> Path:
    """A data root holding `builtin` (the default data.path), prepared once: launches are
    checked by the worker's own rules, which want a finished dataset."""
    from chain_support import prepare_data

    root = tmp_path_factory.mktemp("data-root")
    prepare_data(root, documents=60, seq_len=64)
    return root / "data"


@pytest.fixture
def data_root(prepared_data_root, isolated, monkeypatch) -> Path:
    monkeypatch.setenv("SLMJOBS_DATA_ROOT", str(prepared_data_root))
    return prepared_data_root
