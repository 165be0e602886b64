"""The run ledger: `<run_dir>/jobs.jsonl`, one JSON object per event (schema: docs/CONTRACTS.md).

Several writers share one ledger: the launcher on a login node, the job script's chain hooks on a
compute node, `slmjobs cancel` from another terminal. Each event is therefore written as ONE
`write()` on a descriptor opened with O_APPEND, under an exclusive `flock`, so lines never
interleave. A writer killed mid-write (SIGKILL at h_rt, a full disk) can still leave a torn
last line: readers skip lines that are not JSON, and the next writer starts on a fresh line.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

LEDGER_NAME = "jobs.jsonl"


def ledger_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LEDGER_NAME


def append(run_dir: str | os.PathLike, event: dict) -> dict:
    """Append `event` (must have an "event" key) with the current `time`; return what was written."""
    return append_unless(run_dir, event, None)


def append_unless(run_dir: str | os.PathLike, event: dict, already) -> dict | None:
    """Append `event` unless `already(events)` is true of the ledger as it is under the lock;
    None when it was not appended. What must happen at most once however many writers race
    (a run's `stopped`, its `then:` actions) is appended through here."""
    if not isinstance(event.get("event"), str):
        raise ValueError(f"ledger event needs an 'event' name, got {event!r}")
    record = {**event, "time": event.get("time", time.time())}
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(ledger_path(run_dir), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if already is not None and already(parse(os.pread(fd, size, 0))):
            return None
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # close a torn line left by a killed writer
        os.write(fd, line)
    finally:
        os.close(fd)  # also releases the lock
    return record


def read(run_dir: str | os.PathLike) -> list[dict]:
    """All events in order; [] when there is no ledger. Torn or foreign lines are skipped."""
    try:  # plain os.path: status reads a thousand ledgers, pathlib's overhead shows
        with open(os.path.join(run_dir, LEDGER_NAME), "rb") as handle:
            return parse(handle.read())
    except FileNotFoundError:
        return []


def parse(data: bytes) -> list[dict]:
    lines = data.splitlines()
    try:  # fast path: the whole ledger in one C-level parse
        events = json.loads(b"[" + b",".join(line for line in lines if line.strip()) + b"]")
        if all(isinstance(event, dict) for event in events):
            return events
    except ValueError:
        pass  # a torn or foreign line: go line by line
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
