"""A run is over: the one place that says so, and what happens then.

    conclude(run_dir, reason, detail)   record `stopped` (reason `finished` included) once,
                                        take back its queued and held links, then run the
                                        run's `then:` actions, each at most once

Every way a run ends goes through `conclude`: a finished worker, a guard, a stopping exit
status, a failed submission, `slmjobs cancel`, and the next look (status, resume) at a run
whose last link was killed before its own `end` hook could say so.

The `then:` actions, listed in run.yaml:

    {mail: ADDRESS}       one mail when the run is over (not when the user cancelled it):
                          how it ended, and the command that continues it
    {submit: RUN_DIR}     a run created earlier waits for this one (`launch --after`): its
                          first link is submitted when this run FINISHES; a stopped run
                          keeps it waiting until `slmjobs resume` brings it to its finish
    {release: SWEEP_DIR}  the run is a sweep member (slmjobs.sweep): whenever it is over,
                          however it ended, its slot is free and the next waiting members
                          are released (once per stop: a resumed member releases again)

An action is recorded in the ledger (an `action` event) under the ledger's lock before it is
done, so two hooks racing to conclude the same run never do it twice. No controller process
exists anywhere: login nodes kill long processes. What an action reports goes to stderr:
it may run inside `slmjobs status`, whose stdout is the table or its --json.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from slmjobs import events, kinds, ledger, rundir, submit
from slmjobs.events import CANCELLED, FINISHED, SUBMIT_FAILED

MAIL_TIMEOUT_SECONDS = 60


def default_actions(profile: dict) -> list[dict]:
    """The `then:` actions every run of `profile` gets: a mail, if the profile names someone."""
    return [{"mail": profile["mail_user"]}] if profile.get("mail_user") else []


# ------------------------------------------------------------------ the one place
def conclude(run_dir, reason: str, detail: str, *, after_link: int = 0,
             take_back: bool = True) -> bool:
    """The run is over for `reason`. Records it unless it is already over (a finished run is
    always recorded finished), takes back every queued or held link after `after_link` (unless
    the caller deletes every job itself: `slmjobs cancel`), and runs the `then:` actions.
    Returns whether this call recorded the stop."""
    run_dir = Path(run_dir)
    if reason == FINISHED:
        rundir.mark_done(run_dir, f"{detail}\n")
        already = events.finished_in_ledger
    else:
        already = lambda run_events: events.stop_in_force(run_events) is not None  # noqa: E731
    recorded = ledger.append_unless(run_dir, events.stopped(reason, detail), already) is not None
    spec = rundir.load_run(run_dir)  # read after the stop: an action added meanwhile is seen
    if take_back:
        take_back_successors(run_dir, spec, after_link, f"the run is over ({reason})")
    run_actions(run_dir, spec)
    return recorded


def take_back_successors(run_dir, spec: dict, link: int, why: str) -> list[str]:
    """Delete every held/queued link after `link` and close each in the ledger as cancelled."""
    successors = events.pending_successors(ledger.read(run_dir), link)
    job_ids = [str(e["job_id"]) for e in successors if e.get("job_id")]
    if job_ids:
        try:
            submit.backend_of(spec).cancel(job_ids)
        except Exception as exc:  # it stays held; when it starts, `begin` finds the run over
            print(f"slmjobs: could not cancel {' '.join(job_ids)}: {exc}", file=sys.stderr)
            return []
    progress = kinds.of(spec).durable_progress(run_dir)
    for event in successors:
        ledger.append(run_dir, events.ended(event["link"], event.get("job_id"), CANCELLED, None,
                                            progress, detail=why))
    return job_ids


# ------------------------------------------------------------------ the actions
def run_actions(run_dir, spec: dict) -> None:
    """The `then:` actions the stop in force calls for, each claimed in the ledger first."""
    stop = events.stop_in_force(ledger.read(run_dir))
    if stop is None:
        return
    for action in spec.get("then") or []:
        if "mail" in action and stop.get("reason") != CANCELLED:
            if _claim(run_dir, "mail", action["mail"], since_resume_only=True):
                send_mail(run_dir, spec, action["mail"], stop)
        elif "submit" in action and stop.get("reason") == FINISHED:
            if _claim(run_dir, "submit", action["submit"], since_resume_only=False):
                start_waiting_run(action["submit"], run_dir)
        elif "release" in action:
            if _claim(run_dir, "release", action["release"], since_resume_only=True):
                release_sweep_slot(action["release"], spec)


def release_sweep_slot(sweep_dir, spec: dict) -> None:
    """The member is over: its slot goes to the next waiting member. Inside a job's hook the
    released member still waits for this very job to end (its slot is free only then). A
    failure is said, never raised: `slmjobs status` fills free slots too."""
    from slmjobs import throttle

    own_job = submit.backend_of(spec).current_job_id()
    try:
        released = throttle.release_next(sweep_dir, by=spec["name"], after=own_job)
    except Exception as exc:  # noqa: BLE001 - the run is over either way
        print(f"slmjobs: run {spec['name']} is over but could not release the next member of "
              f"its sweep ({exc}); `slmjobs status` will", file=sys.stderr)
        return
    if released:
        print(f"slmjobs: run {spec['name']} is over: released job(s) {' '.join(released)} of "
              f"its sweep", file=sys.stderr)


def _claim(run_dir, name: str, target: str, since_resume_only: bool) -> bool:
    claim = events.action(name, target, f"{name} {target}")
    taken = lambda run_events: events.action_taken(run_events, name, target, since_resume_only)  # noqa: E731
    return ledger.append_unless(run_dir, claim, taken) is not None


def mail_text(run_dir, spec: dict, stop: dict) -> tuple[str, str]:
    """(subject, body) of the one mail a run sends when it is over."""
    name = spec["name"]
    run_events = ledger.read(run_dir)
    links = len(events.started_links(run_events))
    if stop.get("reason") == FINISHED:
        subject = f"slmjobs: run {name} finished"
        verdict = f"Run {name} finished: {stop.get('detail')}."
        what_next = f"Look at it: slmjobs status {name}; slmjobs plot {name}"
    else:
        subject = f"slmjobs: run {name} stopped ({stop.get('reason')})"
        verdict = f"Run {name} stopped ({stop.get('reason')}): {stop.get('detail')}."
        what_next = (f"See why: slmjobs logs {name}\n"
                     f"Continue it, once the cause is fixed: slmjobs resume {name}")
    body = (f"{verdict}\n\n"
            f"Links run: {links}\n"
            f"Run directory: {run_dir}\n\n"
            f"{what_next}\n")
    return subject, body


def send_mail(run_dir, spec: dict, address: str, stop: dict) -> None:
    """Through the cluster's `mail` command (profile key `mailer`); a failure is said on
    stderr and in the ledger, never raised: the run is over either way."""
    subject, body = mail_text(run_dir, spec, stop)
    argv = [*shlex.split(spec["cluster"].get("mailer") or "mail"), "-s", subject, address]
    try:
        proc = subprocess.run(argv, input=body, text=True, capture_output=True,
                              timeout=MAIL_TIMEOUT_SECONDS)
        problem = None if proc.returncode == 0 else \
            f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-200:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        print(f"slmjobs: could not mail {address} about run {spec['name']} ({argv[0]}: {problem})",
              file=sys.stderr)
        ledger.append(run_dir, events.action("mail", address, f"failed: {argv[0]}: {problem}"))


# ------------------------------------------------------------------ runs that wait
def wait_for(awaited_dir, waiting_dir) -> str | None:
    """Make the run in `waiting_dir` start when the run in `awaited_dir` finishes: a `submit`
    action in the awaited run's run.yaml. If that run has finished already, start now.
    Returns the first link's job id when it was submitted now."""
    awaited_dir, waiting_dir = Path(awaited_dir), Path(waiting_dir)
    ledger.append(waiting_dir, events.waiting(str(awaited_dir)))
    with rundir.locked(awaited_dir):
        spec = rundir.load_run(awaited_dir)
        spec["then"] = [*(spec.get("then") or []), {"submit": str(waiting_dir)}]
        rundir.save_run(awaited_dir, spec)
    # A hook that concluded the awaited run before our save ran its actions without ours:
    # its stop is in the ledger by now, so run them again (each still at most once).
    run_actions(awaited_dir, spec)
    submitted = events.of_kind(ledger.read(waiting_dir), "submitted")
    return submitted[0]["job_id"] if submitted else None


def start_waiting_run(waiting_dir, awaited_dir) -> None:
    """Submit the waiting run's first link, unless it was cancelled or started already."""
    waiting_dir = Path(waiting_dir)
    if not rundir.is_run_dir(waiting_dir):
        print(f"slmjobs: run {waiting_dir} waited for {Path(awaited_dir).name} but is gone",
              file=sys.stderr)
        return
    with rundir.locked(waiting_dir):
        run_events = ledger.read(waiting_dir)
        if events.stop_in_force(run_events) or events.is_submitted(run_events, 1):
            return
        try:
            job_id = submit.submit_link(waiting_dir, 1)
        except Exception as exc:  # the retries are spent: stop it visibly, never silently
            conclude(waiting_dir, SUBMIT_FAILED, f"link 1 could not be submitted when "
                                                 f"{Path(awaited_dir).name} finished: {exc}")
            return
    print(f"slmjobs: run {waiting_dir.name} started: link 1 submitted as job {job_id} "
          f"({Path(awaited_dir).name} finished)", file=sys.stderr)
