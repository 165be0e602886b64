"""The ledger's events: one constructor per kind of event, and every question asked of a list
of them. docs/CONTRACTS.md lists the same kinds (a test holds the two together); the file
format and its locked appends are slmjobs.ledger's.

Constructors return the dict to append (the ledger adds `time`). Predicates are pure functions
of the events read from one ledger, in order.
"""

from __future__ import annotations

# How a link ended (`ended.how`) and why a chain stopped (`stopped.reason`).
FINISHED, HANDED_OFF, CRASHED, KILLED, CANCELLED = (
    "finished", "handed_off", "crashed", "killed", "cancelled")
SUBMIT_FAILED = "submit_failed"   # the next link could not be submitted, retries spent
BAD_CONFIG = "bad_config"         # the worker exited 2: its input can never train
DISK_FULL = "disk_full"           # the worker exited 74: a save failed for lack of space/quota
NO_INTACT_CHECKPOINT = "no_intact_checkpoint"  # every checkpoint to resume from is damaged
DIVERGED = "diverged"             # the worker exited 65: the loss or the weights became NaN/inf


# ------------------------------------------------------------------ constructors
def submitted(link: int, job_id: str, script: str, hold_on: str | None) -> dict:
    return {"event": "submitted", "link": int(link), "job_id": job_id, "script": script,
            "hold_on": hold_on}


def started(link: int, job_id: str | None, host: str) -> dict:
    return {"event": "started", "link": link, "job_id": job_id, "host": host}


def ended(link: int, job_id: str | None, how: str, exit_status: int | None,
          progress: int | None, step: int | None = None, detail: str | None = None) -> dict:
    """`progress`: the run's durable progress when the link ended (the kind's measure,
    slmjobs.kinds); `step`: how far the link got (0 work lost at a planned hand-off)."""
    event = {"event": "ended", "link": link, "job_id": job_id, "how": how,
             "exit_status": exit_status, "progress": progress}
    if step is not None:
        event["step"] = step
    if detail is not None:
        event["detail"] = detail
    return event


def not_submitted(link: int, reason: str, detail: str) -> dict:
    """Link `link` could not be submitted when it should have been (`reason`: job_id_unknown,
    submit_failed); the one rule: the current link's `end` submits it."""
    return {"event": "not_submitted", "link": link, "reason": reason, "detail": detail}


def checkpoint_set_aside(link: int, path: str, step: int, reason: str,
                         resumes_from: int | None) -> dict:
    """Link `link` found the checkpoint it was to resume from damaged and renamed it
    `*.damaged`; it resumes from step `resumes_from` (None: no intact one was left)."""
    return {"event": "checkpoint_set_aside", "link": link, "path": path, "step": step,
            "reason": reason, "resumes_from": resumes_from}


def stopped(reason: str, detail: str) -> dict:
    return {"event": "stopped", "reason": reason, "detail": detail}


def resumed(link: int, progress: int | None, walltime: str | None,
            previous_stop: str | None) -> dict:
    return {"event": "resumed", "link": link, "progress": progress,
            "walltime": walltime, "previous_stop": previous_stop}


def action(name: str, target: str, detail: str) -> dict:
    """One of the run's `then:` actions was taken when the run was over (`name`: mail, submit;
    `target`: the address, the run directory); recorded BEFORE it is done, so it is done at
    most once however many hooks race."""
    return {"event": "action", "action": name, "target": target, "detail": detail}


def waiting(for_run: str) -> dict:
    """The run's first link is submitted when run `for_run` (a directory) finishes."""
    return {"event": "waiting", "for": for_run}


def accounted(link: int | None, job_id: str, job) -> dict:
    """What the scheduler's accounting says about a job that left the queue (GPU-hours, exit
    status); recorded once per job, by the chain for killed links and by status for the rest."""
    return {"event": "accounted", "link": link, "job_id": job_id, "wallclock": job.wallclock,
            "exit_status": job.exit_status, "failed": job.failed, "reason": job.reason,
            "gpus": job.gpus, "slots": job.slots}


EVENTS = ("submitted", "not_submitted", "started", "checkpoint_set_aside", "ended", "stopped",
          "resumed", "accounted", "action", "waiting")


# ------------------------------------------------------------------ predicates
def of_kind(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e.get("event") == kind]


def progress_of(event: dict):
    """An `ended` or `resumed` event's durable progress (`checkpoint_step` before kinds)."""
    return event.get("progress", event.get("checkpoint_step"))


def action_taken(events: list[dict], name: str, target: str, since_resume_only: bool) -> bool:
    searched = since_resume(events) if since_resume_only else events
    return any(e.get("action") == name and e.get("target") == target
               for e in of_kind(searched, "action"))


def waiting_for(events: list[dict]) -> str | None:
    """The run directory this run waits for, until its first link is submitted."""
    waits = of_kind(events, "waiting")
    return waits[-1].get("for") if waits and not of_kind(events, "submitted") else None

def since_resume(events: list[dict]) -> list[dict]:
    """The events since the last `resumed`: what the guards count and the stop in force."""
    last = max((i for i, e in enumerate(events) if e.get("event") == "resumed"), default=-1)
    return events[last + 1:]


def stop_in_force(events: list[dict]) -> dict | None:
    """The `stopped` event after the last `resumed`, or None: the chain may go on."""
    stops = of_kind(since_resume(events), "stopped")
    return stops[-1] if stops else None


def stop_reason(events: list[dict]) -> str | None:
    stop = stop_in_force(events)
    return stop.get("reason", "stopped") if stop else None


def finished_in_ledger(events: list[dict]) -> bool:
    return any(e.get("reason") == FINISHED for e in of_kind(events, "stopped"))


def ended_links(events: list[dict]) -> dict[int, dict]:
    return {e["link"]: e for e in of_kind(events, "ended") if isinstance(e.get("link"), int)}


def started_links(events: list[dict]) -> dict[int, dict]:
    return {e["link"]: e for e in of_kind(events, "started") if isinstance(e.get("link"), int)}


def found_nothing_to_do(ended_event: dict) -> bool:
    """An `ended` event of a link whose `begin` found the run finished or stopped and exited at
    once: it never ran the worker (the chain's nothing_to_do writes exactly this)."""
    return ended_event.get("how") == CANCELLED and ended_event.get("exit_status") == 0


def trained_links(events: list[dict]) -> list[int]:
    """The links that ran the worker, in order: started, and did not find nothing to do."""
    ended = ended_links(events)
    return [k for k in sorted(started_links(events)) if not found_nothing_to_do(ended.get(k, {}))]


def pending_successors(events: list[dict], link: int) -> list[dict]:
    """`submitted` events of links after `link` that never started nor ended: held or queued."""
    done = set(started_links(events)) | set(ended_links(events))
    return [e for e in of_kind(events, "submitted")
            if isinstance(e.get("link"), int) and e["link"] > link and e["link"] not in done]


def is_submitted(events: list[dict], link: int) -> bool:
    return any(e.get("link") == link for e in of_kind(events, "submitted"))


def next_link(events: list[dict]) -> int:
    """The number a new link of the run gets: one past every link that was ever submitted (a
    link that could not be submitted keeps its number for the next try)."""
    return max((e["link"] for e in of_kind(events, "submitted") if isinstance(e.get("link"), int)),
               default=0) + 1


def submitted_job_ids(events: list[dict]) -> list[str]:
    return [str(e["job_id"]) for e in of_kind(events, "submitted") if e.get("job_id")]


def accounted_job_ids(events: list[dict]) -> set[str]:
    return {str(e.get("job_id")) for e in of_kind(events, "accounted")}


def killed_unaccounted(events: list[dict]) -> list[dict]:
    """`ended` events of killed links whose accounting is not recorded yet (qacct lags)."""
    accounted = accounted_job_ids(events)
    return [e for e in of_kind(events, "ended")
            if e.get("how") == KILLED and str(e.get("job_id")) not in accounted]


def jobs(events: list[dict]) -> list[dict]:
    """One entry per job of the run, in submission order: link, job id, submission time and the
    first `started`, `ended` and `accounted` event the ledger has for it."""
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


def never_started(job: dict) -> bool:
    """A job entry (from `jobs`) deleted before it started: the scheduler forgot it at once."""
    return "started" not in job and job.get("ended", {}).get("how") == CANCELLED


def links_without_progress(events: list[dict], ended: list[dict]) -> int:
    """How many of the latest ended links, in a row, did not move the run's durable progress
    past the best seen since the last `resumed`."""
    resumed_events = of_kind(events, "resumed")
    best = (progress_of(resumed_events[-1]) if resumed_events else None) or 0
    stalled = 0
    for event in ended:
        if event.get("how") == CANCELLED:
            continue  # a link stopped by the user or a guard is no evidence either way
        value = progress_of(event) or 0
        if value > best:
            best, stalled = value, 0
        else:
            stalled += 1
    return stalled


def guard_verdict(events: list[dict], limits: dict):
    """May one more link train? None if yes, else (reason, detail) for the `stopped` event.

    Each guard counts over the links since the last `resumed`: max_links (links started),
    crash_budget (links whose worker crashed; planned hand-offs and hard kills do not count),
    no_progress_links (ended links in a row that did not advance the run's progress).
    `events` are those known before the next link would start (its own `started` excluded).
    """
    recent = since_resume(events)
    links = started_links(recent)
    closed = ended_links(recent)
    ended = [closed[k] for k in sorted(closed) if k in links]
    if len(links) >= limits["max_links"]:
        return "max_links", f"{len(links)} links since launch/resume, max_links={limits['max_links']}"
    crashes = [e for e in ended if e.get("how") == CRASHED]
    if len(crashes) >= limits["crash_budget"]:
        statuses = ", ".join(f"link {e['link']}: exit {e.get('exit_status')}" for e in crashes)
        return "crash_budget", (f"{len(crashes)} crashed links, crash_budget="
                                f"{limits['crash_budget']} ({statuses})")
    stalled = links_without_progress(events, ended)
    if stalled >= limits["no_progress_links"]:
        return "no_progress", (f"progress did not advance over the last {stalled} links "
                               f"(no_progress_links={limits['no_progress_links']})")
    return None
