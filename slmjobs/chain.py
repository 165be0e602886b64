"""The chain: a run carries itself from job to job across walltime limits.

Every link's job script calls two hooks around the worker (docs/CONTRACTS.md):

    python -m slmjobs.chain begin RUN_DIR LINK      # 0: train; 3: nothing to do (exit 0)
    ... worker ...
    python -m slmjobs.chain end RUN_DIR LINK RC

`begin` records the link's start, closes a predecessor that died without `end` (h_rt SIGKILL,
OOM, a lost node), stops the chain when the run is done or a guard says so, and otherwise submits
the successor HELD on this very job. Grid Engine starts a `-hold_jid` successor however its
predecessor ends, so the chain survives any death of this link (FINDINGS 3c, 3f); a successor
submitted only after the worker returns would not. `end` records how the worker ended, marks the
run finished, and removes the held successor when the chain must not go on.

Guards (each with its own counter, over the links since the last `resumed` event):
  max_links    -- links started
  crash_budget -- links whose worker crashed (planned hand-offs and hard kills do not count)
  no_progress  -- consecutive ended links whose checkpoint step did not advance
A stopping guard records `stopped` with its reason and leaves nothing of the run queued or held.

Only the standard library and slmjobs' light modules are imported here: the hooks run inside
every job, before and after the worker, and must cost well under a second.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from slmjobs import ledger
from slmjobs.errors import UsageError

TRAIN = 0     # begin: go on and train
NOTHING = 3   # begin: nothing to do; the job script exits 0 without starting the worker

FINISHED, HANDED_OFF, CRASHED, KILLED, CANCELLED = (
    "finished", "handed_off", "crashed", "killed", "cancelled")
EXIT_FINISHED, EXIT_HANDED_OFF = 0, 75

# Defaults for the chain limits when run.yaml names none (the launcher normally writes them).
DEFAULT_LIMITS = {"max_links": 50, "crash_budget": 3, "no_progress_links": 3}

# Composer's checkpoint names carry the batch: ep0-ba120-rank0.pt
_BATCH_IN_NAME = re.compile(r"-ba(\d+)-")


# ----------------------------------------------------------------- run directory readers
def read_progress(run_dir: Path) -> dict:
    """The trainer's heartbeat, or {} when there is none (yet) or it is unreadable."""
    try:
        with open(os.path.join(run_dir, "progress.json"), "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run's latest checkpoint: progress.json, else the `latest` link's name."""
    step = read_progress(run_dir).get("checkpoint_step")
    if isinstance(step, int):
        return step
    latest = Path(run_dir) / "checkpoints" / "latest-rank0.pt"
    try:
        match = _BATCH_IN_NAME.search(os.readlink(latest))
    except OSError:
        return None
    return int(match.group(1)) if match else None


def load_run(run_dir: Path) -> dict:
    """run.yaml as a dict (the launcher owns its shape; we read the scheduler and the limits)."""
    from slmjobs import launch

    run = launch.load_run(run_dir)
    return run if isinstance(run, dict) else vars(run)


def chain_limits(run: dict) -> dict:
    """max_links / crash_budget / no_progress_links: run.yaml's `chain:` block (which includes
    `launch --max-links`) over the profile snapshot's `chain:` over the defaults."""
    limits = dict(DEFAULT_LIMITS)
    profile = run.get("cluster") if isinstance(run.get("cluster"), dict) else {}
    for block in (profile.get("chain"), run, run.get("chain")):
        if isinstance(block, dict):
            limits.update({k: v for k, v in block.items()
                           if k in DEFAULT_LIMITS and isinstance(v, int) and v > 0})
    return limits


def scheduler_kind(run: dict) -> str:
    profile = run.get("profile") or run.get("cluster") or {}
    kind = run.get("scheduler") or (profile.get("scheduler") if isinstance(profile, dict) else None)
    return kind or "local"


def backend_for(run_dir: Path):
    from slmjobs.backends import get_backend

    return get_backend(scheduler_kind(load_run(run_dir)))


def submit_link(run_dir: Path, link: int, hold_on: str | None) -> str:
    """One seam for submitting a link: the launcher renders, submits and records `submitted`."""
    from slmjobs import launch

    return launch.submit_link(run_dir, link, hold_on=hold_on)


# ----------------------------------------------------------------- ledger decisions (pure)
def window(events: list[dict]) -> list[dict]:
    """The events since the last `resumed`: what the guards count."""
    last = max((i for i, e in enumerate(events) if e.get("event") == "resumed"), default=-1)
    return events[last + 1:]


def of_kind(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e.get("event") == kind]


def ended_links(events: list[dict]) -> dict[int, dict]:
    return {e["link"]: e for e in of_kind(events, "ended") if isinstance(e.get("link"), int)}


def started_links(events: list[dict]) -> dict[int, dict]:
    return {e["link"]: e for e in of_kind(events, "started") if isinstance(e.get("link"), int)}


def found_nothing_to_do(ended: dict) -> bool:
    """An `ended` event of a link whose `begin` found the run finished or stopped and exited at
    once: it never ran the worker (`begin`'s nothing_to_do writes exactly this)."""
    return ended.get("how") == CANCELLED and ended.get("exit_status") == 0


def trained_links(events: list[dict]) -> list[int]:
    """The links that ran the worker, in order: started, and did not find nothing to do."""
    ended = ended_links(events)
    return [k for k in sorted(started_links(events)) if not found_nothing_to_do(ended.get(k, {}))]


def finished_in_ledger(events: list[dict]) -> bool:
    return any(e.get("reason") == FINISHED for e in of_kind(events, "stopped"))


def stop_reason(events: list[dict]) -> str | None:
    """The reason the chain is stopped now (a `stopped` after the last `resumed`), or None."""
    stops = of_kind(window(events), "stopped")
    return stops[-1].get("reason", "stopped") if stops else None


def guard_verdict(events: list[dict], limits: dict) -> tuple[str, str] | None:
    """May one more link train? None if yes, else (reason, detail) for the `stopped` event.

    `events` are those known before the next link would start (its own `started` excluded).
    """
    recent = window(events)
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
        return "no_progress", (f"checkpoint step did not advance over the last {stalled} links "
                               f"(no_progress_links={limits['no_progress_links']})")
    return None


def links_without_progress(events: list[dict], ended: list[dict]) -> int:
    """How many of the latest ended links, in a row, did not move the checkpoint forward."""
    resumed = of_kind(events, "resumed")
    best = (resumed[-1].get("checkpoint_step") if resumed else None) or 0
    stalled = 0
    for event in ended:
        if event.get("how") == CANCELLED:
            continue  # a link stopped by the user or a guard is no evidence either way
        step = event.get("checkpoint_step") or 0
        if step > best:
            best, stalled = step, 0
        else:
            stalled += 1
    return stalled


def pending_successors(events: list[dict], link: int) -> list[dict]:
    """`submitted` events of links after `link` that never started nor ended: held or queued."""
    done = set(started_links(events)) | set(ended_links(events))
    return [e for e in of_kind(events, "submitted")
            if isinstance(e.get("link"), int) and e["link"] > link and e["link"] not in done]


# ----------------------------------------------------------------- actions
def record(run_dir: Path, event: str, **fields) -> dict:
    return ledger.append(run_dir, {"event": event, **fields})


def cancel_successors(run_dir: Path, link: int, why: str) -> list[str]:
    """Delete every held/queued link after `link` and close each in the ledger as cancelled."""
    successors = pending_successors(ledger.read(run_dir), link)
    job_ids = [str(e["job_id"]) for e in successors if e.get("job_id")]
    if job_ids:
        try:
            backend_for(run_dir).cancel(job_ids)
        except Exception as exc:  # it stays held; when it starts, `begin` finds the chain stopped
            print(f"slmjobs.chain: could not cancel {' '.join(job_ids)}: {exc}", file=sys.stderr)
            return []
    for event in successors:
        record(run_dir, "ended", link=event["link"], job_id=event.get("job_id"), how=CANCELLED,
               exit_status=None, checkpoint_step=checkpoint_step(run_dir), detail=why)
    return job_ids


def close_killed_predecessor(run_dir: Path, link: int, events: list[dict]) -> None:
    """The previous link started but never ran `end`: it died hard. Record it as killed."""
    previous = started_links(events).get(link - 1)
    if previous is None or (link - 1) in ended_links(events):
        return
    job_id = previous.get("job_id")
    record(run_dir, "ended", link=link - 1, job_id=job_id, how=KILLED, exit_status=None,
           checkpoint_step=checkpoint_step(run_dir), step=read_progress(run_dir).get("step"),
           detail="the link ended without running `chain end` (h_rt, OOM, node loss or qdel)")
    record_accounting(run_dir, link - 1, job_id)


def record_accounting(run_dir: Path, link: int, job_id: str | None) -> bool:
    """Add the scheduler's wallclock for a killed link (GPU-hours); qacct may lag a second."""
    if not job_id or any(str(e.get("job_id")) == str(job_id)
                         for e in of_kind(ledger.read(run_dir), "accounted")):
        return False  # `slmjobs status` records accounting too: once per job is enough
    try:
        job = backend_for(run_dir).accounting(str(job_id))
    except Exception as exc:  # accounting is a nicety: never let it stop the chain
        print(f"slmjobs.chain: no accounting for job {job_id}: {exc}", file=sys.stderr)
        return False
    if job is None:
        return False
    ledger.append(run_dir, accounted_event(link, str(job_id), job))
    return True


def accounted_event(link: int | None, job_id: str, job) -> dict:
    """The ledger's record of what the scheduler's accounting says about a job (GPU-hours,
    exit status); written by the chain for killed links and by `slmjobs status` for the rest."""
    return {"event": "accounted", "link": link, "job_id": job_id, "wallclock": job.wallclock,
            "exit_status": job.exit_status, "failed": job.failed, "reason": job.reason,
            "gpus": job.gpus, "slots": job.slots}


def record_late_accounting(run_dir: Path, events: list[dict]) -> None:
    """Killed links whose accounting was not ready when their successor began."""
    accounted = {str(e.get("job_id")) for e in of_kind(events, "accounted")}
    for event in of_kind(events, "ended"):
        if event.get("how") == KILLED and str(event.get("job_id")) not in accounted:
            record_accounting(run_dir, event["link"], event.get("job_id"))


def run_is_finished(run_dir: Path, events: list[dict]) -> bool:
    if (Path(run_dir) / "DONE").exists() or finished_in_ledger(events):
        return True
    progress = read_progress(run_dir)
    # A link killed after its worker finished (before `end` ran) leaves only this trace.
    return progress.get("state") == FINISHED and progress.get("checkpoint_step") is not None \
        and progress.get("checkpoint_step") == progress.get("max_steps")


def mark_finished(run_dir: Path, link: int, events: list[dict]) -> None:
    (Path(run_dir) / "DONE").write_text(f"finished at link {link}, {time.ctime()}\n")
    if not finished_in_ledger(events):
        record(run_dir, "stopped", reason=FINISHED,
               detail=f"max duration reached at step {checkpoint_step(run_dir)} (link {link})")


def ensure_successor(run_dir: Path, link: int, job_id: str | None) -> str | None:
    """Submit link+1 held on this job unless it already exists (a re-run of the same job)."""
    events = ledger.read(run_dir)
    if any(e.get("link") == link + 1 for e in of_kind(events, "submitted")):
        return None
    return submit_link(run_dir, link + 1, hold_on=job_id)


# ----------------------------------------------------------------- the hooks
def begin(run_dir: Path, link: int, job_id: str | None = None) -> int:
    """Inside link `link`, before the worker: returns TRAIN (0) or NOTHING (3)."""
    run_dir = Path(run_dir)
    job_id = job_id if job_id is not None else os.environ.get("JOB_ID")
    events = ledger.read(run_dir)
    close_killed_predecessor(run_dir, link, events)
    before = ledger.read(run_dir)  # what the guards judge: this link's own start excluded
    record(run_dir, "started", link=link, job_id=job_id, host=socket.gethostname())

    def nothing_to_do(why: str) -> int:
        cancel_successors(run_dir, link, why)
        record(run_dir, "ended", link=link, job_id=job_id, how=CANCELLED, exit_status=0,
               checkpoint_step=checkpoint_step(run_dir), detail=why)
        print(f"slmjobs.chain: link {link}: {why}; nothing to do")
        return NOTHING

    if run_is_finished(run_dir, before):
        mark_finished(run_dir, link, before)
        return nothing_to_do("the run is already finished")
    reason = stop_reason(before)
    if reason:
        return nothing_to_do(f"the chain is stopped ({reason})")
    verdict = guard_verdict(before, chain_limits(load_run(run_dir)))
    if verdict:
        record(run_dir, "stopped", reason=verdict[0], detail=verdict[1])
        return nothing_to_do(f"guard {verdict[0]}: {verdict[1]}")

    try:
        successor = ensure_successor(run_dir, link, job_id)
    except Exception as exc:  # train anyway: `end` tries again, the work of this link counts
        print(f"slmjobs.chain: link {link}: could not submit link {link + 1}: {exc}",
              file=sys.stderr)
        successor = None
    # `slmjobs cancel` may have listed the run's jobs just before our submission landed.
    if stop_reason(ledger.read(run_dir)):
        return nothing_to_do("the chain was cancelled while this link was starting")
    if successor:
        print(f"slmjobs.chain: link {link}: link {link + 1} submitted as job {successor}, "
              f"held on job {job_id}")
    return TRAIN


def how_it_ended(rc: int) -> str:
    return {EXIT_FINISHED: FINISHED, EXIT_HANDED_OFF: HANDED_OFF}.get(rc, CRASHED)


def end(run_dir: Path, link: int, rc: int, job_id: str | None = None) -> int:
    """Inside link `link`, after the worker exited with `rc`. Always returns 0."""
    run_dir = Path(run_dir)
    job_id = job_id if job_id is not None else os.environ.get("JOB_ID")
    how = how_it_ended(rc)
    step = checkpoint_step(run_dir)
    # `step` (last step reached, from the heartbeat) beside `checkpoint_step` shows the work a
    # link did after its last checkpoint: 0 at a planned hand-off.
    record(run_dir, "ended", link=link, job_id=job_id, how=how, exit_status=rc,
           checkpoint_step=step, step=read_progress(run_dir).get("step"))
    events = ledger.read(run_dir)
    # Every outcome, the last link's included: qacct had not caught up with a killed
    # predecessor when this link began, and a finished run has no later link to ask again.
    record_late_accounting(run_dir, events)
    if how == FINISHED:
        mark_finished(run_dir, link, events)
        cancel_successors(run_dir, link, "the run finished")
        print(f"slmjobs.chain: link {link}: run finished at step {step}")
        return 0
    if stop_reason(events):
        cancel_successors(run_dir, link, f"the chain is stopped ({stop_reason(events)})")
        return 0
    verdict = guard_verdict(events, chain_limits(load_run(run_dir)))
    if verdict:
        record(run_dir, "stopped", reason=verdict[0], detail=verdict[1])
        cancel_successors(run_dir, link, f"guard {verdict[0]}")
        print(f"slmjobs.chain: link {link}: chain stopped by guard {verdict[0]}: {verdict[1]}")
        return 0
    successor = ensure_successor(run_dir, link, job_id)  # normally already there, from begin
    print(f"slmjobs.chain: link {link}: {how} (exit {rc}) at checkpoint step {step}; "
          f"link {link + 1} continues" + (f" as job {successor}" if successor else ""))
    return 0


# ----------------------------------------------------------------- resume (slmjobs resume RUN)
def active_jobs(run_dir: Path, events: list[dict]) -> dict:
    """Jobs of the run the scheduler still has queued, held or running. All of them are asked
    about: a link the ledger calls cancelled may still be dying (`dr`) for a moment."""
    from slmjobs.backends import ACTIVE_STATES

    job_ids = [str(e["job_id"]) for e in of_kind(events, "submitted") if e.get("job_id")]
    if not job_ids:
        return {}
    jobs = backend_for(run_dir).query(job_ids)
    return {jid: job for jid, job in jobs.items() if job.state in ACTIVE_STATES}


def set_walltime(run_dir: Path, walltime: str) -> str:
    """Change the walltime of the next links in run.yaml (validated by the launcher's rules)."""
    from slmjobs import launch

    return launch.set_walltime(run_dir, walltime)


def resume_run(run_dir: Path, walltime: str | None = None) -> str:
    """Restart a stopped or cancelled chain from its latest checkpoint; returns the new job id."""
    run_dir = Path(run_dir)
    events = ledger.read(run_dir)
    if not events:
        raise UsageError(f"{run_dir} has no ledger (jobs.jsonl): not a launched run")
    if run_is_finished(run_dir, events):
        raise UsageError(f"run {run_dir.name} is already finished: nothing to resume")
    active = active_jobs(run_dir, events)
    if active:
        states = ", ".join(f"job {jid} {job.state}" for jid, job in sorted(active.items()))
        raise UsageError(f"run {run_dir.name} is still active ({states}): "
                         f"`slmjobs cancel {run_dir.name}` first")
    if walltime is not None:
        walltime = set_walltime(run_dir, walltime)
    links = [e["link"] for e in events if isinstance(e.get("link"), int)]
    link = max(links, default=0) + 1
    record(run_dir, "resumed", link=link, checkpoint_step=checkpoint_step(run_dir),
           walltime=walltime, previous_stop=stop_reason(events))
    return submit_link(run_dir, link, hold_on=None)


# ----------------------------------------------------------------- python -m slmjobs.chain
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slmjobs.chain",
                                     description="chain hooks called by every link's job script")
    sub = parser.add_subparsers(dest="hook", required=True)
    for name in ("begin", "end"):
        hook = sub.add_parser(name)
        hook.add_argument("run_dir", type=Path)
        hook.add_argument("link", type=int)
        if name == "end":
            hook.add_argument("rc", type=int)
    args = parser.parse_args(argv)
    if not (args.run_dir / ledger.LEDGER_NAME).exists():
        print(f"slmjobs.chain: {args.run_dir} is not a run directory (no {ledger.LEDGER_NAME})",
              file=sys.stderr)
        return 2
    recorded = load_run(args.run_dir).get("run_dir")
    if recorded and Path(recorded).resolve() != args.run_dir.resolve():
        # a copied run directory: its scripts would submit links into the original run
        print(f"slmjobs.chain: {args.run_dir} is a copy of run {recorded} (run.yaml's run_dir); "
              "allowed is the run's own directory", file=sys.stderr)
        return 2
    if args.hook == "begin":
        return begin(args.run_dir, args.link)
    return end(args.run_dir, args.link, args.rc)


if __name__ == "__main__":
    sys.exit(main())
