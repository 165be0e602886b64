"""The chain: a run carries itself from job to job across walltime limits; and the two commands
that steer it from outside, `slmjobs cancel` and `slmjobs resume`.

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

The guards (events.guard_verdict) count over the links since the last `resumed` event; the run's
kind (slmjobs.kinds) says what progress and "finished" mean. A stopping guard records `stopped`
with its reason and leaves nothing of the run queued or held.

Only the standard library and slmjobs' light modules are imported here: the hooks run inside
every job, before and after the worker, and must cost well under a second.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

from slmjobs import events, kinds, ledger, over, profiles, rundir, submit
from slmjobs.events import (BAD_CONFIG, CANCELLED, CRASHED, DISK_FULL, FINISHED, HANDED_OFF,
                            KILLED, SUBMIT_FAILED)
from slmjobs.errors import UsageError

TRAIN = 0     # begin: go on and train
NOTHING = 3   # begin: nothing to do; the job script exits 0 without starting the worker

# The worker's exit statuses (docs/CONTRACTS.md). 128 + 9: SIGKILL from outside the job (the
# kernel's OOM killer, a node agent), which is a kill like h_rt, not a crash; 128 + 15: SIGTERM
# from outside that no hand-off answered (SLURM's --time or scancel reaching the `composer`
# launcher, or a worker still starting), the same.
# 74 (EX_IOERR): a save failed for lack of space or quota, which retrying cannot fix either.
# 65 (EX_DATAERR): the loss or the weights became non-finite; the same data diverges again.
EXIT_FINISHED, EXIT_BAD_CONFIG, EXIT_DIVERGED, EXIT_DISK_FULL, EXIT_HANDED_OFF, EXIT_SIGKILL = (
    0, 2, 65, 74, 75, 137)
EXIT_SIGTERM = 143
# Exit statuses after which the chain must stop at once, and the reason it records.
STOPPING_EXITS = {EXIT_BAD_CONFIG: BAD_CONFIG, EXIT_DIVERGED: events.DIVERGED,
                  EXIT_DISK_FULL: DISK_FULL}


class Run:
    """One run directory as the hooks see it: its request, its kind and its backend, read once."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        self.spec = rundir.load_run(self.dir)
        self.kind = kinds.of(self.spec)
        self.limits = self.spec["chain"]
        self._backend = None

    @property
    def backend(self):
        if self._backend is None:
            self._backend = submit.backend_of(self.spec)
        return self._backend

    def events(self) -> list[dict]:
        return ledger.read(self.dir)

    def record(self, event: dict) -> dict:
        return ledger.append(self.dir, event)

    def progress(self) -> int | None:
        return self.kind.durable_progress(self.dir)

    def is_finished(self, run_events: list[dict]) -> bool:
        # A link killed after its worker finished (before `end` ran) leaves only the kind's trace.
        return rundir.is_done(self.dir) or events.finished_in_ledger(run_events) \
            or self.kind.finished_trace(self.dir)

    def verdict(self, run_events: list[dict]):
        return events.guard_verdict(run_events, self.limits)

    def conclude(self, reason: str, detail: str, link: int = 0, take_back: bool = True) -> bool:
        return over.conclude(self.dir, reason, detail, after_link=link, take_back=take_back)

    def finish(self, link: int) -> bool:
        return self.conclude(FINISHED, f"max duration reached at {self.kind.progress_name} "
                                       f"{self.progress()} (link {link})", link)


# ----------------------------------------------------------------- actions
def close_killed_predecessor(run: Run, link: int, run_events: list[dict]) -> None:
    """The previous link started but never ran `end`: it died hard. Record it as killed."""
    previous = events.started_links(run_events).get(link - 1)
    if previous is None or (link - 1) in events.ended_links(run_events):
        return
    job_id = previous.get("job_id")
    run.record(events.ended(
        link - 1, job_id, KILLED, None, run.progress(),
        step=rundir.read_progress(run.dir).get("step"),
        detail="the link ended without recording its end (h_rt, OOM, node loss, qdel, or a "
               "ledger it could not write)"))
    job = record_accounting(run, link - 1, job_id)
    reason = STOPPING_EXITS.get(job.exit_status) if job else None
    if reason:  # its `end` could not record why (a full disk): the next write that can, does
        run.conclude(reason, worker_error(run, link - 1, job.exit_status), link - 1)


def record_accounting(run: Run, link: int, job_id: str | None):
    """Add the scheduler's accounting for a killed link (GPU-hours); qacct may lag a second.
    Returns the accounted job, or None."""
    if not job_id or str(job_id) in events.accounted_job_ids(run.events()):
        return None  # `slmjobs status` records accounting too: once per job is enough
    try:
        job = run.backend.accounting(str(job_id))
    except Exception as exc:  # accounting is a nicety: never let it stop the chain
        print(f"slmjobs.chain: no accounting for job {job_id}: {exc}", file=sys.stderr)
        return None
    if job is None:
        return None
    run.record(events.accounted(link, str(job_id), job))
    return job


def ensure_successor(run: Run, link: int, job_id: str | None) -> str | None:
    """Submit link+1 held on this job unless it already exists (a re-run of the same job)."""
    if not run.kind.chains or events.is_submitted(run.events(), link + 1):
        return None
    return submit.submit_link(run.dir, link + 1, hold_on=job_id)


def successor_at_begin(run: Run, link: int, job_id: str | None) -> str | None:
    """The successor held on this job, submitted before the worker starts so that any death of
    this link still continues the chain. Never an unheld one: it would train beside this link
    on the same checkpoints. What cannot be submitted now is recorded (`not_submitted`) and
    `end` submits it once the worker is done, whatever the cause."""
    if not run.kind.chains or events.is_submitted(run.events(), link + 1):
        return None
    if job_id is None:
        detail = (f"the {run.backend.kind} scheduler did not tell this job its id "
                  f"({run.backend.JOB_ID_VARIABLE or 'no variable'} unset): a successor held on it "
                  "cannot be made, and an unheld one would train beside this link")
        return not_submitted(run, link + 1, "job_id_unknown", detail)
    try:
        return ensure_successor(run, link, job_id)
    except Exception as exc:  # train anyway: `end` tries again, the work of this link counts
        return not_submitted(run, link + 1, "submit_failed", str(exc))


def not_submitted(run: Run, link: int, reason: str, detail: str) -> None:
    run.record(events.not_submitted(link, reason, detail))
    print(f"slmjobs.chain: link {link} not submitted yet ({reason}): {detail}; "
          f"link {link - 1}'s end will submit it", file=sys.stderr)
    return None


# ----------------------------------------------------------------- the hooks
def begin(run_dir: Path, link: int, job_id: str | None = None) -> int:
    """Inside link `link`, before the worker: returns TRAIN (0) or NOTHING (3)."""
    run = Run(run_dir)
    job_id = job_id if job_id is not None else run.backend.current_job_id()
    close_killed_predecessor(run, link, run.events())
    before = run.events()  # what the guards judge: this link's own start excluded
    run.record(events.started(link, job_id, socket.gethostname()))

    def nothing_to_do(why: str) -> int:
        over.take_back_successors(run.dir, run.spec, link, why)
        run.record(events.ended(link, job_id, CANCELLED, 0, run.progress(), detail=why))
        print(f"slmjobs.chain: link {link}: {why}; nothing to do")
        return NOTHING

    if run.is_finished(before):
        run.finish(link)
        return nothing_to_do("the run is already finished")
    reason = events.stop_reason(before)
    if reason:
        return nothing_to_do(f"the chain is stopped ({reason})")
    found, stop = run.kind.before_link(run.dir, link)
    for event in found:
        run.record(event)
        print(f"slmjobs.chain: link {link}: {describe(event)}", file=sys.stderr)
    if stop:
        run.conclude(*stop, link)
        return nothing_to_do(f"{stop[0]}: {stop[1]}")
    verdict = run.verdict(before)
    if verdict:
        run.conclude(*verdict, link)
        return nothing_to_do(f"guard {verdict[0]}: {verdict[1]}")

    successor = successor_at_begin(run, link, job_id)
    # `slmjobs cancel` may have listed the run's jobs just before our submission landed.
    if events.stop_reason(run.events()):
        return nothing_to_do("the chain was cancelled while this link was starting")
    if successor:
        print(f"slmjobs.chain: link {link}: link {link + 1} submitted as job {successor}, "
              f"held on job {job_id}")
    return TRAIN


def describe(event: dict) -> str:
    """A ledger event a kind's `before_link` found, as one log line."""
    if event.get("event") == "checkpoint_set_aside":
        resumes = event.get("resumes_from")
        return (f"checkpoint {event['path']} (step {event['step']}) is damaged: {event['reason']}; "
                f"set aside" + (f"; resuming from step {resumes}" if resumes is not None else ""))
    return ", ".join(f"{k}={v}" for k, v in event.items())


def how_it_ended(rc: int) -> str:
    return {EXIT_FINISHED: FINISHED, EXIT_HANDED_OFF: HANDED_OFF,
            EXIT_SIGKILL: KILLED, EXIT_SIGTERM: KILLED}.get(rc, CRASHED)


def worker_error(run: Run, link: int, rc: int) -> str:
    """The worker's own one-line reason (`error: ...`) from the link's log, the last one."""
    try:
        lines = rundir.log_path(run.dir, link).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    said = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    return said[-1] if said else f"the worker exited {rc} without saying why"


def end(run_dir: Path, link: int, rc: int, job_id: str | None = None) -> int:
    """Inside link `link`, after the worker exited with `rc`. Always returns 0."""
    run = Run(run_dir)
    job_id = job_id if job_id is not None else run.backend.current_job_id()
    how = how_it_ended(rc)
    progress = run.progress()
    # `step` (last step reached, from the heartbeat) beside the durable progress shows the work
    # a link did after its last checkpoint: 0 at a planned hand-off.
    run.record(events.ended(link, job_id, how, rc, progress,
                            step=rundir.read_progress(run.dir).get("step")))
    run_events = run.events()
    # Every outcome, the last link's included: qacct had not caught up with a killed
    # predecessor when this link began, and a finished run has no later link to ask again.
    for killed in events.killed_unaccounted(run_events):
        record_accounting(run, killed["link"], killed.get("job_id"))
    if how == FINISHED:
        run.finish(link)
        print(f"slmjobs.chain: link {link}: run finished at {run.kind.progress_name} {progress}")
        return 0
    if rc in STOPPING_EXITS:  # it will not change by itself: no more queue waits for it
        reason, detail = STOPPING_EXITS[rc], worker_error(run, link, rc)
        run.conclude(reason, detail, link)
        print(f"slmjobs.chain: link {link}: chain stopped ({reason}): {detail}", file=sys.stderr)
        return 0
    reason = events.stop_reason(run_events)
    if reason:
        over.take_back_successors(run.dir, run.spec, link, f"the chain is stopped ({reason})")
        return 0
    verdict = run.verdict(run_events)
    if verdict:
        run.conclude(*verdict, link)
        print(f"slmjobs.chain: link {link}: chain stopped by guard {verdict[0]}: {verdict[1]}")
        return 0
    try:
        successor = ensure_successor(run, link, job_id)  # normally already there, from begin
    except Exception as exc:  # the retries are spent: stop visibly, never silently
        detail = f"link {link + 1} could not be submitted: {exc}"
        run.conclude(SUBMIT_FAILED, detail, link)
        print(f"slmjobs.chain: link {link}: chain stopped: {detail}; continue it with "
              f"`slmjobs resume {run.dir.name}`", file=sys.stderr)
        return 0
    print(f"slmjobs.chain: link {link}: {how} (exit {rc}) at {run.kind.progress_name} {progress}; "
          f"link {link + 1} continues" + (f" as job {successor}" if successor else ""))
    return 0


# ----------------------------------------------------------------- steering from outside
def cancel_run(run_dir) -> list[str]:
    """`slmjobs cancel`: stop the chain, then delete every queued, held or running job of it.

    `stopped` is written FIRST: a link starting right now reads it in its `begin` hook and
    submits nothing more. A second pass catches a successor submitted while we cancelled."""
    with rundir.locked(run_dir):
        run = Run(run_dir)
        run.conclude(CANCELLED, "slmjobs cancel", take_back=False)  # all its jobs go below
        cancelled: list[str] = []
        for _ in range(2):
            run_events = run.events()
            targets = [j for j in submit.active_jobs(run.dir, run_events, run.backend)
                       if j not in cancelled]
            if not targets:
                break
            run.backend.cancel(targets)
            for job in events.jobs(run_events):
                if job["job_id"] in targets and "ended" not in job:
                    run.record(events.ended(job.get("link"), job["job_id"], CANCELLED, None,
                                            run.progress(), detail="slmjobs cancel"))
            cancelled += targets
        return cancelled


EXITING_WAIT = 60  # seconds resume waits for jobs that recorded their end to leave the queue


def jobs_still_alive(run: "Run", run_events: list[dict]) -> dict:
    """The run's jobs the scheduler still has. A job whose link already recorded `ended` (its
    end hook ran, or `slmjobs cancel` wrote it) is only exiting: its shell, the scheduler's
    epilogue. Those are waited for, up to EXITING_WAIT, rather than told to be cancelled."""
    over_in_ledger = {job["job_id"] for job in events.jobs(run_events) if "ended" in job}
    give_up = time.monotonic() + EXITING_WAIT
    while True:
        active = submit.active_jobs(run.dir, run_events, run.backend)
        if not active or not set(active) <= over_in_ledger or time.monotonic() > give_up:
            return active
        time.sleep(1.0)


def resume_run(run_dir, walltime: str | None = None, held: bool = False) -> str:
    """`slmjobs resume`: restart a stopped or cancelled chain from its latest checkpoint;
    returns the new link's job id. One at a time (the run's lock): of two at once, the second
    finds the first one's link active and refuses. `held`: with a user hold (a sweep member
    resumed under its sweep's throttle)."""
    with rundir.locked(run_dir):
        run = Run(run_dir)
        run_events = run.events()  # none: a launch killed before it submitted link 1
        if run.is_finished(run_events):
            run.finish(events.next_link(run_events) - 1)  # a killed last link: say so once
            raise UsageError(f"run {run.dir.name} is already finished: nothing to resume")
        waiting = events.waiting_for(run_events)
        if waiting and not events.stop_in_force(run_events):
            raise UsageError(f"run {run.dir.name} waits for run {Path(waiting).name}: it starts "
                             f"when that run finishes (allowed: `slmjobs resume {Path(waiting).name}`"
                             " if that one stopped)")
        active = jobs_still_alive(run, run_events)
        if active:
            states = ", ".join(f"job {jid} {job.state}" for jid, job in sorted(active.items()))
            raise UsageError(f"run {run.dir.name} is still active ({states}): "
                             f"`slmjobs cancel {run.dir.name}` first")
        stop = events.stop_reason(run_events)
        no_room = rundir.no_room_for_a_checkpoint(run.dir)
        if no_room:  # the next link would only fail to save again
            raise UsageError(f"cannot resume run {run.dir.name}: {no_room}")
        run.kind.recheck(run.spec, run.dir, stop)  # the recorded stop's cause must be gone
        if walltime is not None:
            walltime = set_walltime(run, walltime)
        link = events.next_link(run_events)
        run.record(events.resumed(link, run.progress(), walltime, stop))
        return submit.submit_link(run.dir, link, hold_on=None, held=held)


def set_walltime(run: Run, walltime: str) -> str:
    """The walltime of the run's next links (`resume --walltime`), checked against the run's
    own profile snapshot and written to run.yaml; returns it as HH:MM:SS."""
    run.spec["walltime"] = profiles.check_walltime(walltime, run.spec["cluster"], run.spec["gpus"])
    rundir.save_run(run.dir, run.spec)
    return run.spec["walltime"]


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
    if not (args.run_dir / rundir.LEDGER_FILE).exists():
        print(f"slmjobs.chain: {args.run_dir} is not a run directory (no {rundir.LEDGER_FILE})",
              file=sys.stderr)
        return 2
    recorded = rundir.load_run(args.run_dir).get("run_dir")
    if recorded and Path(recorded).resolve() != args.run_dir.resolve():
        # a copied run directory: its scripts would submit links into the original run
        print(f"slmjobs.chain: {args.run_dir} is a copy of run {recorded} (run.yaml's run_dir); "
              "allowed is the run's own directory", file=sys.stderr)
        return 2
    try:
        if args.hook == "begin":
            return begin(args.run_dir, args.link)
        return end(args.run_dir, args.link, args.rc)
    except OSError as exc:  # a full disk or quota: the ledger itself cannot be written
        print(f"slmjobs.chain: link {args.link}: cannot write the run directory {args.run_dir}: "
              f"{exc.strerror or exc}; the next link (or `slmjobs status`) that can will record "
              f"how this one ended" + (f" (worker exit {args.rc})" if args.hook == "end" else ""),
              file=sys.stderr)
        return 1 if args.hook == "begin" else 0


if __name__ == "__main__":
    sys.exit(main())
