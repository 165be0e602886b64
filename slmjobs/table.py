"""The status table: one line per run, one column per Column: the shared ones and the kinds' own.

The rule for a column: a title, the row key it shows, and a function from the row to the cell's
text. A later addition (a kind's own progress, a swept value, a score) is one more Column whose
key the status row carries; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _plain(value) -> str:
    return "-" if value is None else str(value)


def out_of(key: str, total_key: str) -> Callable[[dict], str]:
    def cell(row: dict) -> str:
        if row.get(key) is None:
            return "-"
        return f"{row[key]}/{row[total_key]}" if row.get(total_key) else str(row[key])
    return cell


def number(key: str, spec: str) -> Callable[[dict], str]:
    return lambda row: "-" if row.get(key) is None else format(row[key], spec)


# What to change before resuming a run stopped for these reasons: resumed as it is, it would
# stop the same way again.
BEFORE_RESUMING = {
    "diverged": "lower train.lr in the overrides of its run.yaml (the next links read them), then ",
}


def note(row: dict) -> str:
    """Why a run stopped or is broken, and the command that continues it; else what the
    scheduler says about its job."""
    resume = f"continue: slmjobs resume {row.get('name')}"
    waiting = row.get("waiting_for")
    if waiting:
        if waiting.get("stop_reason") and waiting["stop_reason"] != "finished":
            return (f"waiting for {waiting['name']}, which stopped ({waiting['stop_reason']}); "
                    f"continue it: slmjobs resume {waiting['name']}")
        return f"waiting for {waiting['name']}"
    if row.get("state") == "broken":
        return f"broken: {row.get('stop_detail')}; {resume}"
    if row.get("state") == "new":
        return f"no link submitted yet; {resume}"
    if row.get("stop_reason") and row["stop_reason"] not in ("finished", "cancelled"):
        detail = f" ({row['stop_detail']})" if row.get("stop_detail") else ""
        return f"stopped: {row['stop_reason']}{detail}; {BEFORE_RESUMING.get(row['stop_reason'], '')}{resume}"
    return row.get("job_reason") or ""


@dataclass(frozen=True)
class Column:
    title: str
    key: str
    cell: Callable[[dict], str] | None = None  # default: the value as text, "-" for none

    def text(self, row: dict) -> str:
        return self.cell(row) if self.cell else _plain(row.get(self.key))


# The columns every run has; a kind's own (slmjobs.kinds: STEP, LOSS, TOK/S for training) go
# between PREV LINK and ETA.
SHARED_BEFORE = [
    Column("RUN", "name"), Column("MODEL", "model"), Column("GPUS", "gpus"),
    Column("LINK", "link", out_of("link", "max_links")), Column("JOB", "job_id"),
    Column("STATE", "state"), Column("PREV LINK", "previous_link"),
]
SHARED_AFTER = [
    Column("ETA", "eta_seconds", lambda row: duration(row.get("eta_seconds"))),
    Column("CKPT AGE", "checkpoint_age_seconds",
           lambda row: duration(row.get("checkpoint_age_seconds"))),
    Column("GPU-H", "gpu_hours", number("gpu_hours", ".2f")),
    Column("NOTE", "note", note),
]


def kinds_of(rows: list[dict]) -> list:
    from slmjobs import kinds
    from slmjobs.errors import UsageError

    found = []
    for name in dict.fromkeys(row.get("kind") or "train" for row in rows):
        try:
            found.append(kinds.by_name(name))
        except UsageError:
            pass  # a kind this installation lacks: its rows show the shared columns
    return found


def columns_for(kind_columns: list) -> list[Column]:
    """The table's columns: the shared ones around every kind's own, each title once."""
    own: list[Column] = []
    for column in kind_columns:
        if column.title not in [c.title for c in own]:
            own.append(column)
    return SHARED_BEFORE + own + SHARED_AFTER


def format_table(rows: list[dict], columns: list[Column] | None = None) -> str:
    """`columns`: default, the shared ones and those of the kinds of `rows`."""
    if not rows:
        return "no runs"
    if columns is None:
        columns = columns_for([c for kind in kinds_of(rows) for c in kind.columns])
    table = [[column.title for column in columns]]
    table += [[column.text(row) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in table)
