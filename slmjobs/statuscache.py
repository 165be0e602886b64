"""The status cache: the row of every SETTLED run (nothing left to ask the scheduler), so that
`slmjobs status` over a thousand old runs reads a thousand stats, not a thousand ledgers.

One JSON file in the cache directory ($SLMJOBS_CACHE_DIR, default ~/.cache/slmjobs), each row
kept with the (mtime, size) stamps of the files it was computed from and valid while none of
them changed. Best effort: an unreadable or unwritable cache only makes status slower.
"""

from __future__ import annotations

import json
import os
import time

from slmjobs import profiles, rundir


class StatusCache:
    def __init__(self):
        self.path = profiles.cache_dir() / "status-cache.json"
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.rows = data.get("rows", {}) if isinstance(data, dict) else {}
        self.changed = False

    def settled_row(self, run_dir) -> dict | None:
        cached = self.rows.get(os.path.abspath(run_dir))
        if not (isinstance(cached, list) and len(cached) == 3
                and cached[0] == rundir.status_stamps(run_dir)):
            return None
        row, checkpoint_time = dict(cached[1]), cached[2]
        if isinstance(checkpoint_time, (int, float)):  # the one field that moves with time
            row["checkpoint_age_seconds"] = time.time() - checkpoint_time
        return row

    def keep_row(self, run_dir, stamps: list, row: dict, checkpoint_time) -> None:
        """`stamps`: the run's files' stamps taken BEFORE the row was read from them."""
        self.rows[os.path.abspath(run_dir)] = [stamps, row, checkpoint_time]
        self.changed = True

    def save(self) -> None:
        """Write back if anything changed; forget runs whose files are gone."""
        if not self.changed:
            return
        data = {"rows": {k: v for k, v in self.rows.items() if os.path.exists(k)}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            rundir.atomic_write(self.path, json.dumps(data))
        except OSError:
            pass
        self.changed = False
