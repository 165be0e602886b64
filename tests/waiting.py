"""Polling instead of fixed sleeps, for every test that waits on a scheduler or a worker."""

from __future__ import annotations

import time

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
