"""Fixtures for the worker's tests: one small prepared dataset per session, a very small model
(support.SMALL), and the real worker run as a subprocess (support.Worker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import MAX_STEPS, Worker


@pytest.fixture(scope='session')
def dataset(tmp_path_factory) -> Path:
    from trainer.prepare import prepare_builtin
    return prepare_builtin(tmp_path_factory.mktemp('data') / 'small', seq_len=32, max_documents=60)


@pytest.fixture
def worker(dataset, tmp_path):
    w = Worker(dataset, tmp_path / 'runs')
    yield w
    w.cleanup()


@pytest.fixture(scope='session')
def reference(dataset, tmp_path_factory) -> Path:
    """An uninterrupted single-rank run of MAX_STEPS, checkpoints every 4 steps, all kept."""
    w = Worker(dataset, tmp_path_factory.mktemp('reference'))
    run = w.run('ref')
    assert run.steps() == list(range(1, MAX_STEPS + 1))
    return run.run_dir
