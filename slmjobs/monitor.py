"""Where every run stands: `slmjobs status`, `logs`, `cancel` (the CLI in cli.py calls these).

Sources, cheapest first: the ledger (`jobs.jsonl`), `run.yaml`, the trainer's `progress.json`,
then ONE scheduler query per backend kind for all runs together. The scheduler's accounting
(`qacct`) is asked only for jobs that have left the queue and are not accounted yet; the answer
is recorded in the ledger as an `accounted` event, so no job is ever asked about twice.

A job that has left the queue but is not in the accounting yet is ENDING: neither finished nor
lost (qacct lags qstat by about a second on Grid Engine).

A run with nothing left to ask the scheduler (every job accounted) is SETTLED: its row is kept
in a status cache ($SLMJOBS_CACHE_DIR, default ~/.cache/slmjobs) until one of its files
changes, so `slmjobs status` over a thousand old runs reads a thousand stats, not a thousand
ledgers. What status needs from run.yaml is read from its JSON digest, `run-summary.json`
(YAML is slow to load).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path

from slmjobs import ledger
from slmjobs.chain import accounted_event, found_nothing_to_do, read_progress
from slmjobs.backends import (ACTIVE_STATES, ENDED, ENDING, UNKNOWN, Job, SchedulerError,
                              get_backend)
from slmjobs.errors import UsageError

# How long after a job left the queue we keep asking the accounting for it. Past this, the
# record is taken as lost (rotated accounting file, reinstalled cluster) and noted once.
ACCOUNTING_PATIENCE_SECONDS = 600

# Run states shown by status. Terminal ones stay until `resume`.
TERMINAL = ("finished", "cancelled", "failed", "killed", "stopped")
# `how` in an `ended` event -> what status shows for a run whose latest link ended so
HOW_TO_STATE = {"finished": "finished", "handed_off": "handed off", "crashed": "failed",
                "killed": "killed", "cancelled": "cancelled"}


# ------------------------------------------------------------------ reading a run
def read_run_yaml(run_dir: Path) -> dict:
    try:
        text = (Path(run_dir) / "run.yaml").read_text()
    except FileNotFoundError:
        return {}
    import yaml  # only when there is a run to read (keeps `slmjobs --help` light)

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~8x faster
    try:
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def scheduler_kind(run: dict) -> str:
    profile = run.get("profile") or run.get("cluster") or {}
    kind = run.get("scheduler") or (profile.get("scheduler") if isinstance(profile, dict) else None)
    return kind or "local"


def max_links(run: dict) -> int | None:
    block = run.get("chain") if isinstance(run.get("chain"), dict) else run
    value = block.get("max_links")
    return value if isinstance(value, int) else None


def after_last_resume(events: list[dict]) -> list[dict]:
    last = max((i for i, e in enumerate(events) if e.get("event") == "resumed"), default=-1)
    return events[last + 1:]


def stop_event(events: list[dict]) -> dict | None:
    """The `stopped` event in force (one after the last `resumed`), or None."""
    stops = [e for e in after_last_resume(events) if e.get("event") == "stopped"]
    return stops[-1] if stops else None


def links(events: list[dict]) -> list[dict]:
    """One entry per job of the run, in submission order: link, job id and what the ledger knows."""
    by_job: dict[str, dict] = {}
    for event in events:
        job_id = event.get("job_id")
        if job_id is None:
            continue
        job_id = str(job_id)
        kind = event.get("event")
        if kind == "submitted":
            by_job.setdefault(job_id, {"job_id": job_id, "link": event.get("link"),
                                       "submitted": event.get("time")})
            continue
        entry = by_job.setdefault(job_id, {"job_id": job_id, "link": event.get("link")})
        if kind in ("started", "ended", "accounted") and kind not in entry:
            entry[kind] = event
    return list(by_job.values())


def summarize(run: dict) -> dict:
    """What status needs from run.yaml."""
    return {"name": run.get("run_name") or run.get("name"), "model": run.get("model"),
            "gpus": run.get("gpus"), "scheduler": scheduler_kind(run), "max_links": max_links(run)}


SUMMARY_FILE = "run-summary.json"


def run_summary(run_dir) -> dict:
    """What status needs from run.yaml. Loading YAML costs ~1 ms a file (1.3 s over 1,000 runs)
    and JSON ~30 µs, so the launcher writes this digest beside run.yaml, stamped with run.yaml's
    (mtime, size). A missing or stale digest (run.yaml edited by hand, a run launched by an
    older slmjobs) is rebuilt from the YAML, and rewritten when the run directory lets us."""
    stamp = _stamp(os.path.join(run_dir, "run.yaml"))
    if stamp is None:
        return summarize({})
    try:
        with open(os.path.join(run_dir, SUMMARY_FILE), "rb") as handle:
            digest = json.loads(handle.read())
        if digest["run_yaml"] == stamp and isinstance(digest["summary"], dict):
            return digest["summary"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    summary = summarize(read_run_yaml(run_dir))
    write_run_summary(run_dir, summary, stamp)
    return summary


def write_run_summary(run_dir, summary: dict, stamp: list | None = None) -> None:
    """Atomically, best effort (someone else's run is read-only to us). `stamp`: run.yaml's when
    `summary` was read from it; by default its stamp now (the launcher, just after writing it)."""
    stamp = stamp or _stamp(os.path.join(run_dir, "run.yaml"))
    tmp = Path(run_dir) / f".{SUMMARY_FILE}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps({"run_yaml": stamp, "summary": summary}))
        os.replace(tmp, Path(run_dir) / SUMMARY_FILE)
    except OSError:
        tmp.unlink(missing_ok=True)


def cache_dir() -> Path:
    if os.environ.get("SLMJOBS_CACHE_DIR"):
        return Path(os.environ["SLMJOBS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "slmjobs"


def _stamp(path: str):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size]


def run_stamps(run_dir) -> list:
    """(mtime, size) of every file a status row is computed from."""
    return [_stamp(os.path.join(run_dir, name))
            for name in ("run.yaml", "jobs.jsonl", "progress.json", "DONE")]


class StatusCache:
    """One JSON file with the row of every SETTLED run (every job accounted, or deleted before
    it started: nothing left to ask the scheduler), kept with the (mtime, size) stamps of the
    files it was computed from and valid while none of them changed. Best effort: an
    unreadable or unwritable cache only makes status slower."""

    def __init__(self):
        self.path = cache_dir() / "status-cache.json"
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.rows = data.get("rows", {}) if isinstance(data, dict) else {}
        self.changed = False

    def settled_row(self, run_dir) -> dict | None:
        cached = self.rows.get(os.path.abspath(run_dir))
        if not (isinstance(cached, list) and len(cached) == 3
                and cached[0] == run_stamps(run_dir)):
            return None
        row, checkpoint_time = dict(cached[1]), cached[2]
        if isinstance(checkpoint_time, (int, float)):  # the one field that moves with time
            row["checkpoint_age_seconds"] = time.time() - checkpoint_time
        return row

    def keep_row(self, info: "RunInfo", row: dict) -> None:
        self.rows[os.path.abspath(info.dir)] = [info.stamps, row,
                                                info.progress.get("checkpoint_time")]
        self.changed = True

    def save(self) -> None:
        """Write back if anything changed; forget runs whose files are gone."""
        if not self.changed:
            return
        data = {"rows": {k: v for k, v in self.rows.items() if os.path.exists(k)}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError:
            pass
        self.changed = False


class RunInfo:
    """Everything read from one run directory (no scheduler yet)."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        self.run = run_summary(self.dir)
        self.kind = self.run["scheduler"]
        self.appended = False  # did status itself write to the ledger (an `accounted` event)?
        self.reread()

    def reread(self) -> None:
        """The ledger and progress again (not run.yaml: it does not change)."""
        self.stamps = run_stamps(self.dir)  # before reading: a later write invalidates
        self.events = ledger.read(self.dir)
        self.progress = read_progress(self.dir)
        self.links = links(self.events)

    def unaccounted_job_ids(self) -> list[str]:
        """Jobs the scheduler still has something to tell about: not accounted, and not
        deleted before they ever started (the scheduler forgets those at once)."""
        return [entry["job_id"] for entry in self.links
                if "accounted" not in entry and not _never_started(entry)]

    def settled(self) -> bool:
        return not self.appended and not self.unaccounted_job_ids()


# ----------------------------------------------------- asking the scheduler, once
def query_all(infos: list[RunInfo]) -> dict[tuple[str, str], Job]:
    """ONE query per backend kind for every not-yet-accounted job of every run."""
    wanted: dict[str, set[str]] = {}
    for info in infos:
        wanted.setdefault(info.kind, set()).update(info.unaccounted_job_ids())
    jobs: dict[tuple[str, str], Job] = {}
    for kind, job_ids in wanted.items():
        if not job_ids:
            continue
        try:
            answers = get_backend(kind).query(sorted(job_ids))
        except (SchedulerError, UsageError) as exc:
            answers = {j: Job(job_id=j, state=UNKNOWN, reason=str(exc)) for j in job_ids}
        for job_id, job in answers.items():
            jobs[(kind, job_id)] = job
    return jobs


def settle_accounting(info: RunInfo, jobs: dict[tuple[str, str], Job]) -> None:
    """For jobs that left the queue: ask the accounting once, record the answer in the ledger
    and turn ENDING into ENDED in `jobs`. Still ENDING afterwards: not accounted yet."""
    backend = None
    for entry in info.links:
        key = (info.kind, entry["job_id"])
        job = jobs.get(key)
        if job is None or "accounted" in entry or job.state not in (ENDING, ENDED):
            continue
        if job.state == ENDING:
            backend = backend or get_backend(info.kind)
            try:
                accounted = backend.accounting(entry["job_id"])
            except (SchedulerError, UsageError):
                accounted = None
            if accounted is None and _accounting_overdue(entry):
                accounted = Job(job_id=entry["job_id"], state=ENDED,
                                reason="no accounting record")
            if accounted is None:
                continue
            job = jobs[key] = accounted
        _record_accounted(info, entry, job)


def job_states(info: RunInfo) -> dict[tuple[str, str], Job]:
    """The scheduler's view of one run's not-yet-accounted jobs, accounting settled."""
    jobs = query_all([info])
    if _left_the_queue(info, jobs):
        info.reread()
    settle_accounting(info, jobs)
    return jobs


def _never_started(entry: dict) -> bool:
    return "started" not in entry and entry.get("ended", {}).get("how") == "cancelled"


def _accounting_overdue(entry: dict) -> bool:
    """The latest thing the ledger knows about the job (its end, else its start, else its
    submission) is so long past that its accounting record must be lost."""
    if "ended" in entry:
        at = entry["ended"].get("time")
    elif "started" in entry:
        at = entry["started"].get("time")
    else:
        at = entry.get("submitted")
    return at is not None and time.time() - at > ACCOUNTING_PATIENCE_SECONDS


def _record_accounted(info: RunInfo, entry: dict, job: Job) -> None:
    event = accounted_event(entry.get("link"), entry["job_id"], job)
    try:
        entry["accounted"] = ledger.append(info.dir, event)
        info.appended = True
    except OSError:  # someone else's run, read-only to us: show it, record nothing
        entry["accounted"] = {**event, "time": time.time()}


# ---------------------------------------------------------------- one row per run
def run_statuses(run_dirs) -> list[dict]:
    cache = StatusCache()
    rows = [cache.settled_row(d) for d in run_dirs]
    infos = {i: RunInfo(d) for i, d in enumerate(run_dirs) if rows[i] is None}
    jobs = query_all(list(infos.values()))
    for i, info in infos.items():
        if _left_the_queue(info, jobs):
            # A job's `end` hook writes `ended` before the job leaves the queue, but maybe
            # after we read the ledger: read it again so "gone, no `ended`" really means killed.
            info.reread()
        settle_accounting(info, jobs)
        rows[i] = _row(info, jobs)
        if info.settled():
            cache.keep_row(info, rows[i])
    cache.save()
    return rows


def _left_the_queue(info: RunInfo, jobs: dict) -> bool:
    return any(jobs[(info.kind, j)].state in (ENDING, ENDED)
               for j in info.unaccounted_job_ids() if (info.kind, j) in jobs)


def _row(info: RunInfo, jobs: dict[tuple[str, str], Job]) -> dict:
    now = time.time()
    run, progress = info.run, info.progress
    current = _current_link(info, jobs)
    job = jobs.get((info.kind, current["job_id"])) if current else None
    stop = stop_event(info.events)
    state = _run_state(info, current, job, stop)
    step, max_steps = _at_least_ledger(info, "step"), progress.get("max_steps")
    rate = progress.get("steps_per_sec")
    eta = None
    if state not in TERMINAL and isinstance(step, int) and isinstance(max_steps, int) \
            and isinstance(rate, (int, float)) and rate > 0:
        eta = max(max_steps - step, 0) / rate
    checkpoint_time = progress.get("checkpoint_time")
    return {
        "name": run.get("name") or info.dir.name,
        "run_dir": str(info.dir),
        "model": run.get("model"),
        "gpus": run.get("gpus"),
        "scheduler": info.kind,
        "link": current.get("link") if current else None,
        "max_links": run.get("max_links"),
        "job_id": current["job_id"] if current else None,
        "job_state": job.state if job else None,
        "job_reason": job.reason if job else "",
        "state": state,
        "previous_link": _previous_end(info, current),
        "step": step,
        "max_steps": max_steps,
        "loss": progress.get("loss"),
        "tokens_per_sec": progress.get("tokens_per_sec"),
        "eta_seconds": eta,
        "checkpoint_step": _at_least_ledger(info, "checkpoint_step"),
        "checkpoint_age_seconds": (now - checkpoint_time)
        if isinstance(checkpoint_time, (int, float)) else None,
        "gpu_hours": _gpu_hours(info, jobs, now),
        "stop_reason": stop.get("reason") if stop else None,
        "stop_detail": stop.get("detail") if stop else None,
    }


def _at_least_ledger(info: RunInfo, key: str):
    """progress.json's `key` (step, checkpoint_step), unless a link that is only starting
    reports less than the ledger knows from the previous links' `ended` events."""
    value = info.progress.get(key)
    known = max((e[key] for e in info.events
                 if e.get("event") == "ended" and isinstance(e.get(key), int)), default=None)
    if known is not None and (not isinstance(value, int) or value < known):
        return known
    return value


def _current_link(info: RunInfo, jobs: dict) -> dict | None:
    """The running job's link if one runs, else the latest submitted one."""
    if not info.links:
        return None
    for entry in reversed(info.links):
        job = jobs.get((info.kind, entry["job_id"]))
        if job is not None and job.state == "running":
            return entry
    # Else the latest link, skipping successors deleted before they started and links that
    # found the run finished or stopped (they never ran the worker).
    for entry in reversed(info.links):
        if not (_never_started(entry) or found_nothing_to_do(entry.get("ended", {}))):
            return entry
    return info.links[-1]


def _run_state(info: RunInfo, current: dict | None, job: Job | None, stop: dict | None) -> str:
    if stop is not None:
        reason = stop.get("reason")
        if reason in ("finished", "cancelled"):
            return reason
        return "failed" if reason == "crash_budget" else "stopped"
    if os.path.exists(os.path.join(info.dir, "DONE")):
        return "finished"
    if current is None:
        return "new"
    if job is not None and job.state in ACTIVE_STATES + (UNKNOWN,):
        return job.state
    ended = current.get("ended")
    if ended is not None:  # the link's own `end` hook (or the chain) said how it ended
        return HOW_TO_STATE.get(ended.get("how"), ended.get("how") or "ended")
    if job is not None and job.state == ENDING:
        return ENDING  # left the queue, not accounted yet: neither finished nor lost
    accounted = current.get("accounted")
    if accounted is not None:  # the link ended without its `end` hook: killed or crashed
        if accounted.get("exit_status") == 137:
            return "killed"
        return "failed" if accounted.get("failed") or accounted.get("exit_status") else "ended"
    return job.state if job is not None else "submitted"  # newer than our scheduler query


def _previous_end(info: RunInfo, current: dict | None) -> str | None:
    if not current or not isinstance(current.get("link"), int):
        return None
    for entry in reversed(info.links):
        if entry.get("link") == current["link"] - 1:
            ended = entry.get("ended")
            if ended is not None:
                return HOW_TO_STATE.get(ended.get("how"), ended.get("how"))
            accounted = entry.get("accounted")
            if accounted is not None:
                return "killed" if accounted.get("exit_status") == 137 else "crashed"
            return None
    return None


def _gpu_hours(info: RunInfo, jobs: dict, now: float) -> float:
    """Accounted wallclock x GPUs over all links, plus the running link so far."""
    default_gpus = info.run.get("gpus") if isinstance(info.run.get("gpus"), int) else 1
    seconds = 0.0
    for entry in info.links:
        accounted = entry.get("accounted")
        if accounted is not None:
            seconds += (accounted.get("wallclock") or 0) * (accounted.get("gpus") or default_gpus)
            continue
        job = jobs.get((info.kind, entry["job_id"]))
        if job is not None and job.state == "running" and job.start_time:
            seconds += max(now - job.start_time, 0) * (job.gpus or default_gpus)
    return seconds / 3600


# ------------------------------------------------------------------------ table
COLUMNS = [("RUN", "name"), ("MODEL", "model"), ("GPUS", "gpus"), ("LINK", "link"),
           ("JOB", "job_id"), ("STATE", "state"), ("PREV LINK", "previous_link"),
           ("STEP", "step"), ("LOSS", "loss"), ("TOK/S", "tokens_per_sec"),
           ("ETA", "eta_seconds"), ("CKPT AGE", "checkpoint_age_seconds"),
           ("GPU-H", "gpu_hours"), ("NOTE", "note")]


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


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if key == "link":
        if value is None:
            return "-"
        return f"{value}/{row['max_links']}" if row.get("max_links") else str(value)
    if key == "step":
        if value is None:
            return "-"
        return f"{value}/{row['max_steps']}" if row.get("max_steps") else str(value)
    if key in ("eta_seconds", "checkpoint_age_seconds"):
        return duration(value)
    if key == "note":
        if row.get("stop_reason") and row["stop_reason"] not in ("finished", "cancelled"):
            return f"stopped: {row['stop_reason']}"
        return row.get("job_reason") or ""
    if value is None:
        return "-"
    if key == "loss":
        return f"{value:.3f}"
    if key == "tokens_per_sec":
        return f"{value:,.0f}"
    if key == "gpu_hours":
        return f"{value:.2f}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "no runs"
    table = [[title for title, _ in COLUMNS]]
    table += [[_cell(row, key) for _, key in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in table)


# ------------------------------------------------------------------ active, cancel
def _active_jobs(info: RunInfo, jobs: dict) -> list[str]:
    """Jobs that are queued, held or running, or that the scheduler could not tell about
    (cancel those too: qdel ignores jobs already gone, and fails loudly if it cannot work)."""
    return [entry["job_id"] for entry in info.links
            if (info.kind, entry["job_id"]) in jobs
            and jobs[(info.kind, entry["job_id"])].state in ACTIVE_STATES + (UNKNOWN,)]


def is_active(run_dir) -> bool:
    """Has the run a job queued, held or running (or one the scheduler cannot tell about)?"""
    jobs = job_states(RunInfo(run_dir))
    return any(job.state in ACTIVE_STATES + (UNKNOWN,) for job in jobs.values())


def cancel_run(run_dir) -> list[str]:
    """Stop the chain, then delete every queued, held or running job of the run.

    `stopped` is written FIRST: a link starting right now reads it in its `begin` hook and
    submits nothing more. A second pass catches a successor submitted while we cancelled."""
    run_dir = Path(run_dir)
    ledger.append(run_dir, {"event": "stopped", "reason": "cancelled",
                            "detail": "slmjobs cancel"})
    cancelled: list[str] = []
    for _ in range(2):
        info = RunInfo(run_dir)
        jobs = query_all([info])
        targets = [j for j in _active_jobs(info, jobs) if j not in cancelled]
        if not targets:
            break
        get_backend(info.kind).cancel(targets)
        for entry in info.links:
            if entry["job_id"] in targets and "ended" not in entry:
                ledger.append(run_dir, {"event": "ended", "link": entry.get("link"),
                                        "job_id": entry["job_id"], "how": "cancelled",
                                        "exit_status": None, "detail": "slmjobs cancel"})
        cancelled += targets
    return cancelled


# ------------------------------------------------------------------------- logs
def link_logs(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "logs").glob("link-*.log"))


def follow_logs(run_dir, follow: bool = False, poll_seconds: float = 0.5,
                status_seconds: float = 10.0, out=None) -> int:
    """Print every link's log in order. With follow, keep printing what is appended, move on to
    the next link's log when it appears, and return once the run is in a terminal state (no job
    queued, held, running or ending) and every log has been read to its end. Logs are read every
    `poll_seconds`; the scheduler is asked only every `status_seconds` (a follow may last days,
    and a qstat twice a second for days is unkind to a shared qmaster)."""
    out = out or sys.stdout
    run_dir = Path(run_dir)
    if not (run_dir / "jobs.jsonl").exists() and not (run_dir / "run.yaml").exists():
        raise UsageError(f"{run_dir} is not a run directory (no run.yaml, no jobs.jsonl)")
    offsets: dict[Path, int] = {}
    polls_per_status = max(1, round(status_seconds / poll_seconds))
    for poll in itertools.count():
        # decided BEFORE the last read, so nothing written before the end is lost
        done = not follow or (poll % polls_per_status == 0 and _settled(run_dir))
        for path in link_logs(run_dir):
            offsets[path] = _print_new(path, offsets.get(path, 0), out)
        if done:
            return 0
        time.sleep(poll_seconds)


def _print_new(path: Path, offset: int, out) -> int:
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    if data:
        out.write(data.decode("utf-8", errors="replace"))
        out.flush()
    return offset + len(data)


def _settled(run_dir: Path) -> bool:
    info = RunInfo(run_dir)
    if not info.links:
        return stop_event(info.events) is not None
    jobs = job_states(info)
    return not any(job.state in ACTIVE_STATES + (ENDING, UNKNOWN) for job in jobs.values())
