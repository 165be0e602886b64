"""Sweeps: many chained training runs from one command, at most K of them holding a scheduler
slot at once, with no controller process anywhere (login nodes kill long processes).

    expand(grammar) -> [[override, ...], ...]     hydra's own parser and BasicSweeper
    start(...) / add(...)                         check every member, then create and submit
    cancel, resume, summary_line, table_rows      steering it, seeing it

Every member is an ordinary `train` run (its own run directory, ledger, guards, resume and
cancel) named `<S>-<values>`. The first K members are submitted as usual; the rest with a user
hold (`qsub -h`, `sbatch --hold`). Each member's run.yaml has the `then:` action
`{release: SWEEP_DIR}`: when the member is over (finished, stopped, cancelled), slmjobs.over
calls `throttle.release_next`, which lifts the hold of the next waiting members while fewer than
K hold a slot. A member that dies before its hook could say so is caught by `slmjobs status`,
which calls `release_next` with the answers of its one scheduler query. The sweep's directory
(`<runs_root>/.sweeps/<S>/sweep.yaml`) and the throttle are slmjobs.throttle's.

Hydra is imported only to expand a sweep's grammar (`slmjobs sweep ...`, `sweep add`).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from slmjobs import rundir, submit
from slmjobs.errors import UsageError
from slmjobs.throttle import load, member_dirs, release_next, save, sweep_dir

MAX_NAME = 100  # launch.RUN_NAME's limit
_NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
QUOTES = "'\""  # hydra keeps a quoted value's quotes in the override; a name does without
GRAMMAR = ("hydra's sweep grammar: key=a,b,c, key=range(START,STOP[,STEP]), key=choice(a,b), "
           "key=glob(PATTERN), or a plain key=value")


# ---------------------------------------------------------------- the grammar
def override_key(override: str) -> str:
    return override.split("=", 1)[0]


def expand(grammar: list[str]) -> tuple[list[list[str]], list[str]]:
    """(members, swept keys): the cartesian product of the grammar's values, in hydra's order
    (the last key varies fastest), each member a list of plain `key=value` overrides with the
    values as hydra parsed them (3e-4 -> 0.0003)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(grammar))
        (members,) = BasicSweeper.split_arguments(parsed, None)
    except HydraException as exc:
        message = " ".join(str(exc).split())
        raise UsageError(f"bad sweep override ({message}): allowed is {GRAMMAR}") from None
    swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    if not members or not members[0]:
        raise UsageError(f"a sweep needs overrides to sweep over: allowed is {GRAMMAR}")
    return members, swept


def member_names(sweep_name: str, members: list[list[str]], swept: list[str],
                 taken=()) -> list[str]:
    """`<S>-<last key component><value>-...` for the swept keys, in the run-name charset, at
    most 100 characters, unique (a member that would collide gets its number appended)."""
    names: list[str] = []
    used = set(taken)
    for number, member in enumerate(members, 1):
        values = dict(o.split("=", 1) for o in member if "=" in o)
        parts = [f"{re.split(r'[./]', key.lstrip('~+'))[-1]}{values[key].strip(QUOTES)}"
                 for key in swept if key in values]
        name = _NOT_IN_A_NAME.sub("_", "-".join([sweep_name, *parts]))[:MAX_NAME]
        if name in used:
            suffix = f"-{number}"
            name = f"{name[:MAX_NAME - len(suffix)]}{suffix}"
            while name in used:
                suffix += "x"
                name = f"{name[:MAX_NAME - len(suffix)]}{suffix}"
        used.add(name)
        names.append(name)
    return names


def swept_overrides(member: list[str], swept: list[str]) -> list[str]:
    return [o for o in member if override_key(o) in swept]


# ---------------------------------------------------------------- making members
def member_requests(sweep_name: str, model: str, members: list[list[str]], names: list[str],
                    request: dict) -> list:
    """One launch.Request per member; members log to one wandb group, the sweep's."""
    from slmjobs.launch import Request

    requests = []
    for name, member in zip(names, members):
        group = [] if any(override_key(o).lstrip("+") == "wandb.group" for o in member) \
            else [f"wandb.group={sweep_name}"]
        requests.append(Request(kind="train", options={"model": model,
                                                       "overrides": [*member, *group]},
                                name=name, **request))
    return requests


def check_members(specs: list[dict], sweep_name: str) -> None:
    """Every member's training configuration, composed and checked in this one process
    (trainer.validate.validate_members): one bad member refuses the whole sweep."""
    from slmjobs import launch
    from slmjobs.kinds import train

    for spec in specs:
        launch.refuse_existing(Path(spec["run_dir"]))
    try:
        from trainer.errors import BadInput
        from trainer.validate import validate_members
    except ImportError as exc:
        raise UsageError(f"could not check the training configuration ({exc}): allowed is a "
                         "Python environment with slmjobs' worker (pip install slmjobs)") from None
    first = specs[0]
    data_root = Path(first["data_root"]) if first.get("data_root") else None
    try:
        plans = validate_members([train.worker_args(s) for s in specs], world_size=first["gpus"],
                                 data_root=data_root, workdir=Path(first["workdir"]))
    except BadInput as exc:
        match = re.match(r"member (\d+) of \d+ \(.*?\): (.*)$", str(exc), re.DOTALL)
        if match:
            name = specs[int(match.group(1)) - 1]["name"]
            raise UsageError(f"sweep {sweep_name}: member {name}: {match.group(2)} "
                             "(nothing was submitted)") from None
        raise UsageError(f"sweep {sweep_name}: {exc} (nothing was submitted)") from None
    train.check_wandb(plans[0].config["wandb"], os.environ)


def resolve_members(sweep_name: str, model: str, members, names, request: dict) -> list[dict]:
    from slmjobs import launch

    return [launch.resolve(r) for r in member_requests(sweep_name, model, members, names, request)]


def create_and_submit(path: Path, specs: list[dict], free_slots: int) -> list[str]:
    """Create every member's run directory and submit its first link: the first `free_slots`
    members as usual, the rest with a user hold. Under the sweep's lock, so no release runs
    meanwhile. Anything failing takes back everything this call made."""
    from slmjobs import launch

    made: list[tuple[Path, str | None]] = []
    try:
        with rundir.locked(path):
            for number, spec in enumerate(specs):
                spec["sweep"] = str(path)
                spec["then"] = [*spec["then"], {"release": str(path)}]
                run_dir = launch.create(spec)
                made.append((run_dir, None))
                made[-1] = (run_dir, submit.submit_link(run_dir, 1, held=number >= free_slots))
    except BaseException:
        for run_dir, job_id in made:
            if job_id:
                try:
                    submit.backend_of(specs[0]).cancel([job_id])
                except Exception:  # noqa: BLE001 - the original error is the one to report
                    pass
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return [job_id for _, job_id in made]


def start(sweep_name: str, model: str, grammar: list[str], max_running: int, request: dict,
          dry_run: bool = False) -> dict:
    """`slmjobs sweep MODEL --name S ...`. Returns {"sweep_dir", "specs", "script" (the first
    member's link 1), "job_ids"}; a dry run creates and submits nothing."""
    from slmjobs import launch
    from slmjobs.render import render_link

    launch.check_run_name(sweep_name)
    if max_running < 1:
        raise UsageError(f"--max-running {max_running}: allowed is 1 or more")
    members, swept = expand(grammar)
    names = member_names(sweep_name, members, swept)
    specs = resolve_members(sweep_name, model, members, names, request)
    path = sweep_dir(Path(specs[0]["run_dir"]).parent, sweep_name)
    if path.exists():
        raise UsageError(f"sweep name {sweep_name!r} is taken ({path}): allowed is a new --name, "
                         f"or more members with `slmjobs sweep add {sweep_name} ...`")
    check_members(specs, sweep_name)
    result = {"sweep_dir": path, "specs": specs, "script": render_link(specs[0], 1),
              "job_ids": []}
    if dry_run:
        return result
    path.mkdir(parents=True)
    record = {"name": sweep_name, "model": model, "grammar": [list(grammar)],
              "common": [o for o in members[0] if override_key(o) not in swept],
              "max_running": max_running, "request": request,
              "members": [{"name": s["name"], "overrides": swept_overrides(m, swept),
                           "run_dir": s["run_dir"]} for s, m in zip(specs, members)],
              "created": time.time()}
    try:
        save(path, record)
        result["job_ids"] = create_and_submit(path, specs, max_running)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return result


def add(path: Path, grammar: list[str], dry_run: bool = False) -> dict:
    """`slmjobs sweep add S overrides...`: more members under the same throttle. Their
    overrides are the sweep's common ones with the new grammar's keys replaced; they are all
    submitted held, and then the free slots are filled."""
    record = load(path)
    members, _ = expand(grammar)
    new_keys = [override_key(o) for o in members[0]]  # each says which member it is
    members = [[o for o in record["common"] if override_key(o) not in new_keys] + m
               for m in members]
    names = member_names(record["name"], members, new_keys,
                         taken=[m["name"] for m in record["members"]])
    specs = resolve_members(record["name"], record["model"], members, names, record["request"])
    check_members(specs, record["name"])
    result = {"sweep_dir": path, "specs": specs, "job_ids": []}
    if dry_run:
        return result
    record["grammar"].append(list(grammar))
    record["members"] += [{"name": s["name"], "overrides": [o for o in m if override_key(o) in new_keys],
                           "run_dir": s["run_dir"]} for s, m in zip(specs, members)]
    save(path, record)  # first: a release that runs as soon as they exist must see them
    try:
        result["job_ids"] = create_and_submit(path, specs, free_slots=0)
    except BaseException:
        record["members"] = record["members"][:-len(specs)]
        save(path, record)
        raise
    result["released"] = release_next(path, by="sweep add")
    return result


# ---------------------------------------------------------------- steering
def cancel(path) -> dict[str, list[str]]:
    """`slmjobs sweep cancel S`: every member's chain, the waiting ones first (so a member
    cancelled later releases no one that is still to be cancelled)."""
    from slmjobs.chain import cancel_run

    deleted = {}
    for run_dir in reversed(member_dirs(path)):
        if rundir.is_run_dir(run_dir) and not rundir.is_done(run_dir):
            deleted[run_dir.name] = cancel_run(run_dir)
    return deleted


RESUMABLE = ("stopped", "failed", "killed", "broken")


def resume(path, rows: list[dict], include_cancelled: bool) -> list[str]:
    """`slmjobs sweep resume S [--failed]`: every member that stopped (and, without --failed,
    every cancelled one) is resumed with a user hold, then the free slots are filled: the
    throttle holds for resumed members too. `rows`: the members' status rows. Returns the
    names resumed."""
    from slmjobs.chain import resume_run

    wanted = RESUMABLE + (("cancelled",) if include_cancelled else ())
    resumed = []
    for row in rows:
        if row["state"] in wanted:
            resume_run(Path(row["run_dir"]), held=True)
            resumed.append(row["name"])
    if resumed:
        release_next(path, by="sweep resume")
    return resumed


# ---------------------------------------------------------------- seeing it
SUMMARY_STATES = {"finished": "finished", "stopped": ("cancelled", "failed", "killed", "stopped",
                                                     "unreadable", "broken")}


def summary_line(record: dict, rows: list[dict]) -> str:
    """`sweep S: N members: a running, b waiting, c finished, d stopped (at most K at once)`."""
    waiting = sum(1 for r in rows if r.get("waiting_for_slot") or r["state"] == "waiting")
    finished = sum(1 for r in rows if r["state"] == "finished")
    stopped = sum(1 for r in rows if r["state"] in SUMMARY_STATES["stopped"])
    running = len(rows) - waiting - finished - stopped
    return (f"sweep {record['name']}: {len(rows)} members: {running} running, {waiting} waiting, "
            f"{finished} finished, {stopped} stopped (at most {record['max_running']} at once)")


def metric_values(run_dir, metric: str) -> tuple:
    """(final, best, tokens) of a member from its metrics history (slmjobs.history): the last
    and the lowest value of `metric`, and the tokens seen at its last record."""
    from slmjobs.history import current_history
    from slmjobs.plot import METRICS

    event, field, _ = METRICS[metric]
    history = current_history(run_dir)
    values = [r[field] for r in history if r.get("event") == event
              and isinstance(r.get(field), (int, float))]
    tokens = [r["tokens"] for r in history if isinstance(r.get("tokens"), int)]
    return (values[-1] if values else None, min(values) if values else None,
            tokens[-1] if tokens else None)


def table_rows(record: dict, rows: list[dict], metric: str) -> list[dict]:
    """One row per member, best `metric` first (members without a value last)."""
    from slmjobs.plot import check_choices

    check_choices(metric, "step")
    by_dir = {r["run_dir"]: r for r in rows}
    table = []
    for member in record["members"]:
        row = by_dir.get(member["run_dir"], {})
        final, best, tokens = metric_values(member["run_dir"], metric)
        table.append({"name": member["name"], "overrides": " ".join(member["overrides"]),
                      f"final_{metric}": final, f"best_{metric}": best, "tokens": tokens,
                      "gpu_hours": row.get("gpu_hours"), "state": row.get("state")})
    return sorted(table, key=lambda r: (r[f"best_{metric}"] is None, r[f"best_{metric}"] or 0,
                                        r["name"]))
