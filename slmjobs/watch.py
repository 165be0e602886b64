"""`slmjobs status --watch [SECONDS]`: the status table, redrawn in place until every run shown
has finished or stopped, or Ctrl-C.

Each redraw is ONE `monitor.run_statuses` call, which asks each scheduler once for all the
runs together, and redraws start at least SECONDS apart: the scheduler is asked at most once
per interval however many runs there are (a watch may run for days next to a shared qmaster).
The runs are listed again at every redraw, so a run launched meanwhile appears.
"""

from __future__ import annotations

import shutil
import sys
import time

from slmjobs import monitor, table
from slmjobs.errors import UsageError

MIN_SECONDS = 1.0
CLEAR_SCREEN, HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[2J", "\x1b[H", "\x1b[K", "\x1b[J"


def watch(list_runs, seconds: float, out=None) -> int:
    """Redraw until every run of `list_runs()` is in a terminal state; 0 then, and on Ctrl-C."""
    if not seconds >= MIN_SECONDS:
        raise UsageError(f"--watch {seconds:g}: allowed: at least {MIN_SECONDS:g} second(s)")
    out = out or sys.stdout
    in_place = out.isatty()
    if in_place:
        out.write(CLEAR_SCREEN)
    try:
        while True:
            started = time.monotonic()
            rows = monitor.run_statuses(list_runs())
            done = all_settled(rows)
            show(frame(rows, seconds, done), out, in_place)
            if done:
                return 0
            time.sleep(max(0.0, started + seconds - time.monotonic()))
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        return 0


def all_settled(rows: list[dict]) -> bool:
    """Every run shown has finished or stopped (no run at all: nothing to wait for)."""
    return all(row["state"] in monitor.TERMINAL for row in rows)


def frame(rows: list[dict], seconds: float, done: bool) -> list[str]:
    clock = time.strftime("%H:%M:%S")
    if done:
        header = f"{clock}  every run shown has finished or stopped"
    else:
        header = f"{clock}  slmjobs status, every {seconds:g} s (Ctrl-C quits)"
    text = table.format_table(rows) if rows else "no runs yet (slmjobs launch MODEL to start one)"
    return [header, "", *text.splitlines()]


def show(lines: list[str], out, in_place: bool) -> None:
    """In a terminal: over the previous frame, cut to the window (a line that wraps or a
    frame that scrolls would break the redraw in place). Elsewhere: frames one after another."""
    if not in_place:
        out.write("\n".join(lines) + "\n\n")
        out.flush()
        return
    width, height = shutil.get_terminal_size()
    if len(lines) > height - 1:
        keep = max(height - 2, 1)
        lines = lines[:keep] + [f"... {len(lines) - keep} more lines (make the window taller)"]
    out.write(HOME + "".join(line[:width] + CLEAR_LINE + "\n" for line in lines) + CLEAR_BELOW)
    out.flush()
