"""The ledger: locked single-write appends, torn lines tolerated."""

from __future__ import annotations

import json
import multiprocessing
import time

import pytest

from slmjobs import ledger


def test_append_adds_time_and_read_returns_events_in_order(tmp_path):
    before = time.time()
    written = ledger.append(tmp_path, {"event": "submitted", "link": 1, "job_id": "7"})
    ledger.append(tmp_path, {"event": "started", "link": 1, "job_id": "7", "time": 5.0})
    events = ledger.read(tmp_path)
    assert events[0] == written and written["time"] >= before
    assert [e["event"] for e in events] == ["submitted", "started"]
    assert events[1]["time"] == 5.0  # an explicit time is kept


def test_no_ledger_reads_empty_and_nameless_event_is_refused(tmp_path):
    assert ledger.read(tmp_path) == []
    with pytest.raises(ValueError, match="'event'"):
        ledger.append(tmp_path, {"link": 1})


def test_torn_last_line_is_skipped_and_the_next_event_starts_a_fresh_line(tmp_path):
    ledger.append(tmp_path, {"event": "submitted", "link": 1})
    with open(tmp_path / "jobs.jsonl", "a") as handle:
        handle.write('{"event": "ended", "li')  # a writer SIGKILLed mid-line
    assert [e["event"] for e in ledger.read(tmp_path)] == ["submitted"]
    ledger.append(tmp_path, {"event": "resumed"})
    assert [e["event"] for e in ledger.read(tmp_path)] == ["submitted", "resumed"]


def _writer(run_dir, worker, count):
    for i in range(count):
        ledger.append(run_dir, {"event": "tick", "worker": worker, "i": i, "pad": "x" * 3000})


def test_concurrent_writers_never_interleave(tmp_path):
    processes = [multiprocessing.Process(target=_writer, args=(tmp_path, w, 150))
                 for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    lines = (tmp_path / "jobs.jsonl").read_text().splitlines()
    assert len(lines) == 600
    events = [json.loads(line) for line in lines]  # every line is whole
    for worker in range(4):
        assert [e["i"] for e in events if e["worker"] == worker] == list(range(150))
