"""Where every run stands: one status row per run (`slmjobs status`; table.py lays them out).

Sources, cheapest first: the ledger (`jobs.jsonl`), run.yaml's digest, the trainer's
`progress.json`, then ONE scheduler query per backend kind for all runs together. The
scheduler's accounting (`qacct`) is asked only for jobs that have left the queue and are not
accounted yet; the answer is recorded in the ledger as an `accounted` event, so no job is ever
asked about twice.

A job that has left the queue but is not in the accounting yet is ENDING: neither finished nor
lost (qacct lags qstat by about a second on Grid Engine).

A run with nothing left to ask the scheduler (every job accounted) is SETTLED: its row is kept
in the status cache (statuscache.py) until one of its files changes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from slmjobs import events, kinds, ledger, over, rundir, submit
from slmjobs.events import FINISHED
from slmjobs.backends import ACTIVE_STATES, ENDED, ENDING, UNKNOWN, Job, SchedulerError, get_backend
from slmjobs.errors import UsageError
from slmjobs.statuscache import StatusCache

# How long after a job left the queue we keep asking the accounting for it. Past this, the
# record is taken as lost (rotated accounting file, reinstalled cluster) and noted once.
ACCOUNTING_PATIENCE_SECONDS = 600

# Run states shown by status. Terminal ones stay until `resume`.
BROKEN = "broken"   # not finished nor stopped, and nothing queued, held or running
WAITING = "waiting"  # created, its first link submitted when the run it waits for finishes
TERMINAL = ("finished", "cancelled", "failed", "killed", "stopped", "unreadable", BROKEN)
# `how` in an `ended` event -> what status shows for a run whose latest link ended so
HOW_TO_STATE = {"finished": "finished", "handed_off": "handed off", "crashed": "failed",
                "killed": "killed", "cancelled": "cancelled"}


class RunInfo:
    """Everything read from one run directory (no scheduler yet)."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        self.run = rundir.run_summary(self.dir)
        self.scheduler = self.run["scheduler"]  # None: run.yaml unreadable, ask nobody
        self.appended = False  # did status itself write to the ledger (an `accounted` event)?
        self.reread()

    def reread(self) -> None:
        """The ledger and progress again (not run.yaml: it does not change)."""
        self.stamps = rundir.status_stamps(self.dir)  # before reading: a later write invalidates
        self.events = ledger.read(self.dir)
        self.progress = rundir.read_progress(self.dir)
        self.jobs = events.jobs(self.events)

    def unaccounted_job_ids(self) -> list[str]:
        """Jobs the scheduler still has something to tell about: not accounted, and not
        deleted before they ever started (the scheduler forgets those at once)."""
        if self.scheduler is None:
            return []
        return [job["job_id"] for job in self.jobs
                if "accounted" not in job and not events.never_started(job)]

    def settled(self) -> bool:
        return not self.appended and not self.unaccounted_job_ids()


# ----------------------------------------------------- asking the scheduler, once
def query_all(infos: list[RunInfo]) -> dict[tuple[str, str], Job]:
    """ONE query per backend kind for every not-yet-accounted job of every run."""
    wanted: dict[str, set[str]] = {}
    for info in infos:
        wanted.setdefault(info.scheduler, set()).update(info.unaccounted_job_ids())
    answers: dict[tuple[str, str], Job] = {}
    for scheduler, job_ids in wanted.items():
        if job_ids:
            for job_id, job in submit.ask(get_backend(scheduler), sorted(job_ids)).items():
                answers[(scheduler, job_id)] = job
    return answers


def settle_accounting(info: RunInfo, answers: dict[tuple[str, str], Job]) -> None:
    """For jobs that left the queue: ask the accounting once, record the answer in the ledger
    and turn ENDING into ENDED in `answers`. Still ENDING afterwards: not accounted yet."""
    backend = None
    for entry in info.jobs:
        key = (info.scheduler, entry["job_id"])
        job = answers.get(key)
        if job is None or "accounted" in entry or job.state not in (ENDING, ENDED):
            continue
        if job.state == ENDING:
            backend = backend or get_backend(info.scheduler)
            try:
                accounted = backend.accounting(entry["job_id"])
            except (SchedulerError, UsageError):
                accounted = None
            if accounted is None and _accounting_overdue(entry):
                accounted = Job(job_id=entry["job_id"], state=ENDED,
                                reason="no accounting record")
            if accounted is None:
                continue
            job = answers[key] = accounted
        _record_accounted(info, entry, job)


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
    event = events.accounted(entry.get("link"), entry["job_id"], job)
    try:
        entry["accounted"] = ledger.append(info.dir, event)
        info.appended = True
    except OSError:  # someone else's run, read-only to us: show it, record nothing
        entry["accounted"] = {**event, "time": time.time()}


def _left_the_queue(info: RunInfo, answers: dict) -> bool:
    return any(answers[(info.scheduler, j)].state in (ENDING, ENDED)
               for j in info.unaccounted_job_ids() if (info.scheduler, j) in answers)


def _reconcile(info: RunInfo, answers: dict) -> None:
    if _left_the_queue(info, answers):
        # A job's `end` hook writes `ended` before the job leaves the queue, but maybe after
        # we read the ledger: read it again so "gone, no `ended`" really means killed.
        info.reread()
    settle_accounting(info, answers)


# ---------------------------------------------------------------- one row per run
def run_statuses(run_dirs) -> list[dict]:
    cache = StatusCache()
    rows = [cache.settled_row(d) for d in run_dirs]
    infos = {i: RunInfo(d) for i, d in enumerate(run_dirs) if rows[i] is None}
    answers = query_all(list(infos.values()))
    for i, info in infos.items():
        _reconcile(info, answers)
        conclude_unrecorded(info)
        rows[i] = status_row(info, answers)
    for i in fill_sweep_slots(run_dirs, infos, answers):
        infos[i].reread()
        rows[i] = status_row(infos[i], answers)
    for i, info in infos.items():
        if info.settled():
            cache.keep_row(info.dir, info.stamps, rows[i], info.progress.get("checkpoint_time"))
    cache.save()
    return rows


def fill_sweep_slots(run_dirs, infos: dict, answers: dict) -> list[int]:
    """Sweeps with a member waiting for a slot: release the next members while fewer than K
    hold one (a member killed before its hook released nobody). Only for sweeps all of whose
    members are shown: this one query knows their jobs. Returns the rows to compute again."""
    waiting = {info.run["sweep"] for info in infos.values()
               if info.run.get("sweep") and events.waiting_for_slot(info.events)}
    if not waiting:
        return []
    from slmjobs import throttle

    shown = {os.path.realpath(d) for d in run_dirs}
    again = []
    for sweep_dir in sorted(waiting):
        try:
            members = {os.path.realpath(d) for d in throttle.member_dirs(sweep_dir)}
            if not members <= shown:
                continue
            scheduler = next(i.scheduler for i in infos.values() if i.run.get("sweep") == sweep_dir)
            released = throttle.release_next(sweep_dir, by="status", answers={
                job_id: job for (kind, job_id), job in answers.items() if kind == scheduler})
        except (OSError, UsageError, SchedulerError) as exc:
            print(f"slmjobs: sweep {Path(sweep_dir).name}: could not release a waiting member: "
                  f"{exc}", file=sys.stderr)
            continue
        again += [i for i, info in infos.items() if released
                  and info.run.get("sweep") == sweep_dir]
    return again


def status_row(info: RunInfo, answers: dict[tuple[str, str], Job]) -> dict:
    now = time.time()
    run, progress = info.run, info.progress
    current = _current_link(info, answers)
    job = answers.get((info.scheduler, current["job_id"])) if current else None
    kind = _kind_of(run)
    stop = events.stop_in_force(info.events) or _unrecorded_stop(info)
    state = _run_state(info, current, job, stop)
    if stop is None and state not in ("finished", "unreadable", "new", WAITING) \
            and _orphaned(info, answers, kind):
        state = BROKEN
    step, max_steps = kind.position(progress)
    step = _at_least_ledger(info, lambda e: e.get("step"), step)
    eta = kind.eta(progress, step, max_steps) if state not in TERMINAL else None
    checkpoint_time = progress.get("checkpoint_time")
    return {
        "name": run.get("name") or info.dir.name,
        "run_dir": str(info.dir),
        "kind": run.get("kind"),
        "model": run.get("model"),
        "gpus": run.get("gpus"),
        "scheduler": info.scheduler,
        "link": current.get("link") if current else None,
        "max_links": run.get("max_links"),
        "job_id": current["job_id"] if current else None,
        "job_state": job.state if job else None,
        "job_reason": job.reason if job else (run.get("error") or ""),
        "state": state,
        "scheduler_unreachable": _unreachable(info, answers),
        "previous_link": _previous_end(info, current),
        "step": step,
        "max_steps": max_steps,
        **kind.status(info.dir, progress),
        "eta_seconds": eta,
        "progress": _progress_at_least_ledger(info, kind.durable_progress(info.dir)),
        "checkpoint_age_seconds": (now - checkpoint_time)
        if isinstance(checkpoint_time, (int, float)) else None,
        "gpu_hours": _gpu_hours(info, answers, now),
        "stop_reason": stop.get("reason") if stop else None,
        "stop_detail": stop.get("detail") if stop else (_why_broken(info) if state == BROKEN
                                                         else None),
        "waiting_for": _waiting_for(info) if state == WAITING else None,
        "sweep": Path(run["sweep"]).name if run.get("sweep") else None,
        "waiting_for_slot": events.waiting_for_slot(info.events) is not None,
        "held_on": _held_on(info, current) if state == "held" else None,
    }


def _held_on(info: RunInfo, current: dict | None) -> str | None:
    """The predecessor job the current link is held behind (`-hold_jid`), if any."""
    for event in events.of_kind(info.events, "submitted"):
        if current and str(event.get("job_id")) == current["job_id"]:
            return event.get("hold_on")
    return None


def _kind_of(run: dict):
    try:
        return kinds.by_name(run.get("kind") or "train")
    except UsageError:  # a kind this installation does not have: show what is kind-blind
        return kinds.Kind()


def _waiting_for(info: RunInfo) -> dict | None:
    """The run this one waits for: its name, and why it stopped if it did."""
    awaited = events.waiting_for(info.events)
    if awaited is None:
        return None
    stop = events.stop_in_force(ledger.read(awaited))
    return {"name": Path(awaited).name, "stop_reason": stop.get("reason") if stop else None}


def conclude_unrecorded(info: RunInfo) -> None:
    """The next look at a run whose last link was killed before its `end` hook: a finished
    trace or a stop the ledger had no room for is concluded now, through the one place
    (slmjobs.over). Someone else's run, read-only to us, is only shown."""
    if info.scheduler is None or events.finished_in_ledger(info.events):
        return
    kind = _kind_of(info.run)
    if kind.finished_trace(info.dir):
        stop = (FINISHED, f"max duration reached at {kind.progress_name} "
                          f"{kind.durable_progress(info.dir)} (seen by status)")
    elif events.stop_in_force(info.events) is None and _unrecorded_stop(info):
        stop = (events.DISK_FULL, _unrecorded_stop(info)["detail"])
    else:
        return
    try:
        over.conclude(info.dir, *stop)
    except (OSError, UsageError) as exc:
        print(f"slmjobs: run {info.dir.name} is over ({stop[0]}) but could not be recorded: {exc}",
              file=sys.stderr)
        return
    info.appended = True
    info.reread()


def _unrecorded_stop(info: RunInfo) -> dict | None:
    """A stop the chain could not write down: a link whose worker exited 74 (disk full), told by
    its `ended` event or the scheduler's accounting when the ledger had no room for more."""
    for entry in info.jobs:
        for source in (entry.get("ended"), entry.get("accounted")):
            if source and source.get("exit_status") == 74 \
                    and source.get("time", 0) >= _last_resume_time(info):
                return {"event": "stopped", "reason": events.DISK_FULL,
                        "detail": f"link {entry.get('link')} could not save a checkpoint (exit 74; "
                                  f"see logs/link-{entry.get('link'):03d}.log)"}
    return None


def _last_resume_time(info: RunInfo) -> float:
    resumed = events.of_kind(info.events, "resumed")
    return resumed[-1].get("time", 0) if resumed else 0


def _unreachable(info: RunInfo, answers: dict) -> bool:
    """The scheduler could not be asked about some job of this run."""
    return any(answers.get((info.scheduler, j), Job(job_id=j, state="")).state == UNKNOWN
               for j in info.unaccounted_job_ids())


def _orphaned(info: RunInfo, answers: dict, kind) -> bool:
    """Not finished, not stopped, and the scheduler says none of its jobs is queued, held or
    running: nothing will ever continue it by itself (e.g. a link whose successor could not
    be submitted was killed). A job newer than our query is not known dead, and one that is
    ENDING is given the second qacct needs before its run is called broken."""
    if not info.jobs or rundir.is_done(info.dir) or kind.finished_trace(info.dir):
        return False
    for job_id in info.unaccounted_job_ids():
        answer = answers.get((info.scheduler, job_id))
        if answer is None or answer.state == ENDING or submit.is_alive(answer):
            return False
    return True


def _why_broken(info: RunInfo) -> str:
    missing = events.of_kind(info.events, "not_submitted")
    if missing:
        last = missing[-1]
        return (f"link {last['link']} was never submitted ({last.get('reason')}: "
                f"{last.get('detail')})")
    return "no job of it is queued, held or running"


def _progress_at_least_ledger(info: RunInfo, value):
    return _at_least_ledger(info, events.progress_of, value)


def _at_least_ledger(info: RunInfo, read, value):
    """The heartbeat's `value`, unless a link that is only starting reports less than the
    ledger knows from the previous links' `ended` events (`read(event)`)."""
    known = max((read(e) for e in events.of_kind(info.events, "ended")
                 if isinstance(read(e), int)), default=None)
    if known is not None and (not isinstance(value, int) or value < known):
        return known
    return value


def _current_link(info: RunInfo, answers: dict) -> dict | None:
    """The running job's link if one runs, else the latest submitted one."""
    if not info.jobs:
        return None
    for entry in reversed(info.jobs):
        job = answers.get((info.scheduler, entry["job_id"]))
        if job is not None and job.state == "running":
            return entry
    # Else the latest link, skipping successors deleted before they started and links that
    # found the run finished or stopped (they never ran the worker).
    for entry in reversed(info.jobs):
        if not (events.never_started(entry) or events.found_nothing_to_do(entry.get("ended", {}))):
            return entry
    return info.jobs[-1]


def _run_state(info: RunInfo, current: dict | None, job: Job | None, stop: dict | None) -> str:
    if info.scheduler is None:
        return "unreadable"
    if stop is not None:
        reason = stop.get("reason")
        if reason in ("finished", "cancelled"):
            return reason
        return "failed" if reason == "crash_budget" else "stopped"
    if rundir.is_done(info.dir):
        return "finished"
    if current is None:
        return WAITING if events.waiting_for(info.events) else "new"
    if events.waiting_for_slot(info.events):
        return WAITING  # a sweep member under its user hold until a slot is free
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
    for entry in reversed(info.jobs):
        if entry.get("link") == current["link"] - 1:
            ended = entry.get("ended")
            if ended is not None:
                return HOW_TO_STATE.get(ended.get("how"), ended.get("how"))
            accounted = entry.get("accounted")
            if accounted is not None:
                return "killed" if accounted.get("exit_status") == 137 else "crashed"
            return None
    return None


def _gpu_hours(info: RunInfo, answers: dict, now: float) -> float:
    """Accounted wallclock x GPUs over all links, plus the running link so far."""
    default_gpus = info.run.get("gpus") if isinstance(info.run.get("gpus"), int) else 1
    seconds = 0.0
    for entry in info.jobs:
        accounted = entry.get("accounted")
        if accounted is not None:
            seconds += (accounted.get("wallclock") or 0) * (accounted.get("gpus") or default_gpus)
            continue
        job = answers.get((info.scheduler, entry["job_id"]))
        if job is not None and job.state == "running" and job.start_time:
            seconds += max(now - job.start_time, 0) * (job.gpus or default_gpus)
    return seconds / 3600


# ------------------------------------------------------------------ is it over?
def job_states(info: RunInfo) -> dict[tuple[str, str], Job]:
    """The scheduler's view of one run's not-yet-accounted jobs, accounting settled."""
    answers = query_all([info])
    _reconcile(info, answers)
    return answers


def is_active(run_dir) -> bool:
    """Has the run a job queued, held or running (or one the scheduler cannot tell about)?"""
    return any(submit.is_alive(job) for job in job_states(RunInfo(run_dir)).values())


def is_settled(run_dir) -> bool:
    """Nothing of the run is queued, held, running or ending (and the scheduler could say so);
    a run that never submitted anything is settled once it is stopped."""
    info = RunInfo(run_dir)
    if not info.jobs:
        return events.stop_in_force(info.events) is not None
    return not any(job.state in ACTIVE_STATES + (ENDING, UNKNOWN)
                   for job in job_states(info).values())


def exists(run_dir) -> bool:
    return os.path.exists(os.path.join(run_dir, rundir.LEDGER_FILE)) or rundir.is_run_dir(run_dir)
