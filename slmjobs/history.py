"""Reading a run's metrics history, `<run_dir>/metrics.jsonl` (written by the trainer's rank 0,
trainer/history.py; schema in docs/CONTRACTS.md).

After a hard kill the next link resumes from the last checkpoint and trains some steps again,
so the file can hold two records for one step. `current_history` is the one place that decides
which record counts; everything that shows the history (`slmjobs plot`) reads it through there.
"""

from __future__ import annotations

from slmjobs.rundir import history_path, read_json_lines

VALUE_EVENTS = ("train", "eval", "hellaswag")


def read_records(run_dir) -> list[dict]:
    """Every record as written, in order; [] without a history. Torn or foreign lines (a link
    killed mid-write) are skipped, as are records without an integer step."""
    return [record for record in read_json_lines(history_path(run_dir))
            if isinstance(record.get("step"), int) and not isinstance(record["step"], bool)]


def current_history(run_dir) -> list[dict]:
    """The records that count, in file order.

    A `start` record at step S (a link resuming from its checkpoint at S) supersedes every
    earlier record with a step after S: those steps were lost with the link that trained
    them and trained again. Of two records of one event at one step, the later one counts.
    So every step has at most one `train`, one `eval` and one `hellaswag` record, from the timeline that led
    to the run's latest checkpoint. `start` records are kept: they are the link boundaries."""
    kept: list[dict] = []
    for record in read_records(run_dir):
        if record.get("event") == "start":
            kept = [r for r in kept if r["step"] <= record["step"]]
        kept.append(record)
    seen: set[tuple[str, int]] = set()
    current = []
    for record in reversed(kept):  # the later of two records for one step wins
        key = (record.get("event"), record["step"])
        if key[0] in VALUE_EVENTS:
            if key in seen:
                continue
            seen.add(key)
        current.append(record)
    return current[::-1]
