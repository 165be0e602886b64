"""A sweep's directory and its throttle: at most K members hold a scheduler slot at once, with
no controller process anywhere (login nodes kill long processes). slmjobs.sweep makes sweeps;
this module is what a member's hook needs when it is over (slmjobs.over's `release` action) and
what status needs to fill a slot a member killed before its hook left free.

    load(sweep_dir) / save(sweep_dir, record)     sweep.yaml
    release_next(sweep_dir, by, after, answers)   fill free slots, under the sweep's lock

Layout: `<runs_root>/.sweeps/<S>/sweep.yaml` (the dot keeps it apart from every run name: status
never lists it as a run, and a launch can never take the directory over). Its `.lock` is the
throttle's lock: two members over at once release two different members.
"""

from __future__ import annotations

from pathlib import Path

from slmjobs import events, ledger, rundir, submit
from slmjobs.errors import UsageError

SWEEPS_DIR = ".sweeps"
SWEEP_FILE = "sweep.yaml"


# ---------------------------------------------------------------- where a sweep lives
def sweep_dir(runs_root, name: str) -> Path:
    return Path(runs_root) / SWEEPS_DIR / name


def is_sweep_dir(path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def load(path) -> dict:
    yaml, loader = rundir.yaml_loader()  # libyaml's where there is one: status reads it too
    try:
        with open(Path(path) / SWEEP_FILE, encoding="utf-8") as handle:
            record = yaml.load(handle, Loader=loader)
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{Path(path) / SWEEP_FILE} is unreadable: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("members"), list):
        raise UsageError(f"{Path(path) / SWEEP_FILE}: not a sweep written by slmjobs")
    return record


def save(path, record: dict) -> None:
    import yaml

    rundir.atomic_write(Path(path) / SWEEP_FILE,
                        yaml.safe_dump(record, sort_keys=False, default_flow_style=False))


def member_dirs(path) -> list[Path]:
    return [Path(m["run_dir"]) for m in load(path)["members"]]


# ---------------------------------------------------------------- the throttle
def holds_slot(run_dir, run_events: list[dict], alive: dict) -> bool:
    """The member has a job the scheduler still holds for it (queued, running, held behind its
    predecessor), and is neither over nor waiting for a slot."""
    if events.waiting_for_slot(run_events) or events.stop_in_force(run_events) is not None \
            or rundir.is_done(run_dir):
        return False
    return any(submit.is_alive(alive[j]) for j in events.submitted_job_ids(run_events) if j in alive)


def release_next(path, by: str, after: str | None = None, answers: dict | None = None) -> list[str]:
    """Lift the user hold of the next waiting members, in the sweep's order, while fewer than K
    members hold a slot. `by`: who found the slot free (a member's name, "status"); `after`: a
    job the released members still wait for (the job whose hook runs this: its slot is free
    only once it has left); `answers`: job id -> Job from a scheduler query already made
    (status), else the scheduler is asked once here. Returns the released job ids."""
    path = Path(path)
    with rundir.locked(path):
        record = load(path)
        members = [(Path(m["run_dir"]), ledger.read(m["run_dir"])) for m in record["members"]]
        waiting = [(d, events.waiting_for_slot(evs)) for d, evs in members]
        waiting = [(d, link) for d, link in waiting if link is not None]
        if not waiting:
            return []
        backend = submit.backend_of(rundir.load_run(waiting[0][0]))
        if answers is None:
            asked = [j for d, evs in members for j in events.submitted_job_ids(evs)
                     if events.stop_in_force(evs) is None and not rundir.is_done(d)]
            answers = submit.ask(backend, asked)
        free = record["max_running"] - sum(holds_slot(d, evs, answers) for d, evs in members)
        released = []
        for run_dir, link in waiting[:max(free, 0)]:
            backend.release([link["job_id"]], after=after)
            ledger.append(run_dir, events.released(link["link"], link["job_id"], by, after))
            released.append(link["job_id"])
        return released
