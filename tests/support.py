"""Helpers shared by test modules: polling instead of fixed sleeps, and small job scripts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


def wait_until(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.1):
    """Return predicate()'s first truthy value; fail the test (never skip) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def job_script(directory: Path, name: str, body: str, *options: str) -> Path:
    """A minimal Grid Engine job script (`#$` options), for the backends' own tests."""
    lines = ["#!/bin/bash", f"#$ -N {name}", f"#$ -o {directory}/{name}.out", "#$ -j y",
             *[f"#$ {o}" for o in options], body, ""]
    path = directory / f"{name}.sh"
    path.write_text("\n".join(lines))
    return path


def make_run_dir(path: Path, scheduler: str = "local", gpus: int = 1, **chain) -> Path:
    """A run directory at `path` as `slmjobs launch` writes it (run.yaml through the real
    writers, for the shipped `scheduler` profile), with no job submitted yet. `chain`
    overrides the profile's limits (max_links=2, ...)."""
    from slmjobs import launch, rundir

    spec = launch.resolve("tiny", gpus=gpus, cluster=scheduler, name=path.name)
    spec.update(run_dir=str(path), chain={**spec["chain"], **chain})
    rundir.create(path, spec)
    return path
