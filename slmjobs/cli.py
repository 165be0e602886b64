"""The `slmjobs` command: thin click commands that parse, call and print.

Each command imports what it needs inside its function, so `slmjobs --help` and
`slmjobs launch ... --dry-run` start fast (no torch, composer or streaming, ever).
Bad input raises UsageError anywhere below: one line on stderr, exit status 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from slmjobs.errors import UsageError

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
def cli():
    """Launch MosaicML Composer GPT training on Grid Engine (SGE) clusters and keep each run
    going across walltime limits by chaining jobs.

    \b
      slmjobs launch gpt2 --gpus 2 --cluster scc --dry-run   # print the job script
      slmjobs launch gpt2 --gpus 2 --cluster scc             # submit; the chain runs itself
      slmjobs status                                         # every run: link, state, step, loss
    """


# ---------------------------------------------------------------------------- launch
@cli.command(context_settings=CONTEXT)
@click.argument("model")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED, metavar="[HYDRA_OVERRIDE]...")
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs on one node (ranks).")
@click.option("--cluster", metavar="NAME|PATH",
              help="Cluster profile name or file (default: env SLMJOBS_CLUSTER, user config, local).")
@click.option("--walltime", metavar="HH:MM:SS", help="Walltime of each link (default: the profile's).")
@click.option("--name", help="Run name (default: MODEL-YYYYmmdd-HHMMSS).")
@click.option("--max-links", type=int, help="Most jobs the chain may use (default: the profile's).")
@click.option("--project", help="Scheduler project (-P); default env SLMJOBS_PROJECT or the profile's.")
@click.option("--after", metavar="RUN", help="Start when run RUN finishes (its name or directory).")
@click.option("--dry-run", is_flag=True, help="Print the exact job script; write and submit nothing.")
@click.option("--validate", is_flag=True, help="Ask the scheduler (qsub -w v) whether it can ever run.")
def launch(model, overrides, gpus, cluster, walltime, name, max_links, project, after, dry_run,
           validate):
    """Render, submit and record a training run of MODEL (tiny, gpt2, gpt2-medium, ...).

    Extra arguments are hydra overrides for the trainer, e.g. train.max_duration=2000ba.
    """
    from slmjobs.launch import Request, launch as do_launch

    request = Request(kind="train", options={"model": model, "overrides": list(overrides)},
                      cluster=cluster, gpus=gpus, walltime=walltime, name=name,
                      max_links=max_links, project=project,
                      after=str(_find_run(after)) if after else None)
    result = do_launch(request, dry_run=dry_run, validate=validate)
    _report_launch(result, dry_run)
    _launch_eval_after(result, overrides, cluster, project, dry_run)


def _launch_eval_after(result: dict, overrides, cluster, project, dry_run: bool) -> None:
    """eval.after=[TASKS]: an eval run that waits for the training run and starts when it
    finishes (the training's `then: submit`)."""
    from slmjobs.kinds.eval import after_tasks
    from slmjobs.launch import Request, launch as do_launch

    tasks = after_tasks(overrides)
    if not tasks:
        return
    name = f"{result['spec']['name']}-eval"
    if dry_run:
        click.echo(f"then: eval run {name} ({','.join(tasks)}) would wait for it", err=True)
        return
    request = Request(kind="eval", options={"target": result["run_dir"], "tasks": tasks}, cluster=cluster,
                      gpus=1, name=name, project=project, after=result["run_dir"])
    do_launch(request)
    click.echo(f"then: eval run {name} ({','.join(tasks)}) waits for it: slmjobs status {name}")


@cli.command(context_settings={**CONTEXT, "ignore_unknown_options": True,
                                "allow_interspersed_args": False})
@click.argument("argv", nargs=-1, type=click.UNPROCESSED, metavar="-- CMD [ARG]...")
@click.option("--cluster", metavar="NAME|PATH",
              help="Cluster profile name or file (default: env SLMJOBS_CLUSTER, user config, local).")
@click.option("--gpus", type=int, help="GPUs on one node (default 1; 0 with --cpus alone).")
@click.option("--cpus", type=int, help="CPU slots; without --gpus, a CPU-only job.")
@click.option("--walltime", metavar="HH:MM:SS", help="Walltime of each link (default: the profile's).")
@click.option("--name", help="Run name (default: command-YYYYmmdd-HHMMSS).")
@click.option("--max-links", type=int, help="Most jobs the chain may use (default: the profile's).")
@click.option("--project", help="Scheduler project (-P); default env SLMJOBS_PROJECT or the profile's.")
@click.option("--after", metavar="RUN", help="Start when run RUN finishes (its name or directory).")
@click.option("--stop-signal", metavar="SIG",
              help="Send SIG (TERM, INT, HUP, USR1, USR2, QUIT) to the command at the deadline.")
@click.option("--resume-glob", metavar="GLOB",
              help="Without a declared checkpoint, resume from the newest file matching GLOB.")
@click.option("--dry-run", is_flag=True, help="Print the exact job script; write and submit nothing.")
@click.option("--validate", is_flag=True, help="Ask the scheduler (qsub -w v) whether it can ever run.")
def run(argv, cluster, gpus, cpus, walltime, name, max_links, project, after, stop_signal,
        resume_glob, dry_run, validate):
    """Run any command as a chain of jobs: `slmjobs run --cpus 2 -- python train.py --lr 3e-4`.

    Every link gives it SLMJOBS_DEADLINE, SLMJOBS_RESUME_FROM, SLMJOBS_CHECKPOINT_DIR and more;
    it exits 0 when finished, 75 to hand off to the next link (docs/CONTRACTS.md, "Any command").
    """
    from slmjobs.launch import Request, launch as do_launch

    argv = list(argv[1:] if argv[:1] == ("--",) else argv)
    request = Request(kind="command", options={"argv": argv, "stop_signal": stop_signal,
                                               "resume_glob": resume_glob},
                      cluster=cluster, gpus=0 if gpus is None and cpus is not None else gpus,
                      cpus=cpus, walltime=walltime, name=name, max_links=max_links,
                      project=project, after=str(_find_run(after)) if after else None)
    result = do_launch(request, dry_run=dry_run, validate=validate)
    _report_launch(result, dry_run)


def _report_launch(result: dict, dry_run: bool) -> None:
    """What every kind's launch command prints: the script (dry run), or where the run is."""
    if result["validation"] is not None:
        click.echo(f"scheduler: {result['validation'].strip() or 'request accepted'}", err=True)
    if dry_run:
        click.echo(result["script"], nl=False)
        return
    name = result["spec"]["name"]
    started = (f"link 1 submitted as job {result['job_id']}" if result["job_id"] else
               f"waiting for run {Path(result['spec']['after']).name} to finish")
    click.echo(f"run {name}: {started}\n"
               f"run dir: {result['run_dir']}\n"
               f"next:\n"
               f"  slmjobs status {name}\n"
               f"  slmjobs logs {name} --follow\n"
               f"  slmjobs cancel {name}")


# ------------------------------------------------------------------------ eval
@cli.command("eval", context_settings=CONTEXT)
@click.argument("run", required=False)
@click.option("--hf-dir", metavar="DIR", help="Score a Hugging Face model directory instead of a run.")
@click.option("--tasks", default="hellaswag", show_default=True, metavar="TASK[,TASK]",
              help="hellaswag (native scorer) and/or lm-eval task names.")
@click.option("--checkpoint", metavar="PATH", help="A checkpoint file (default: the newest intact one).")
@click.option("--all-kept", is_flag=True, help="Every intact checkpoint the run kept.")
@click.option("--gpus", type=int, default=None, help="GPUs (default 1; 0 = on the CPU).")
@click.option("--cpus", type=int, default=None, help="CPU slots (with --gpus 0).")
@click.option("--cluster", metavar="NAME|PATH", help="Cluster profile (default: the run's own).")
@click.option("--walltime", metavar="HH:MM:SS", help="Walltime of the job (default: the profile's).")
@click.option("--name", help="Run name of the evaluation (default: RUN-eval-YYYYmmdd-HHMMSS).")
@click.option("--project", help="Scheduler project (-P).")
@click.option("--dry-run", is_flag=True, help="Print the exact job script; write and submit nothing.")
def eval_command(run, hf_dir, tasks, checkpoint, all_kept, gpus, cpus, cluster, walltime, name, project,
                 dry_run):
    """Score RUN's newest intact checkpoint (or --checkpoint, --all-kept, or --hf-dir DIR) on
    HellaSwag and/or lm-eval tasks, as a job; scores go to RUN's evals.jsonl."""
    from slmjobs import rundir
    from slmjobs.kinds.eval import default_name
    from slmjobs.launch import Request, launch as do_launch

    if (run is None) == (hf_dir is None):
        raise UsageError("give a RUN or --hf-dir DIR (one of them)")
    if cpus is not None and gpus not in (None, 0):
        raise UsageError(f"--cpus {cpus} with --gpus {gpus}: allowed: --gpus N or --cpus N (then --gpus 0)")
    target = str(_find_run(run)) if run else None
    if cluster is None and target:  # the run's own cluster
        snapshot = rundir.load_run(target).get("cluster") or {}
        cluster = snapshot.get("source") if os.path.isfile(str(snapshot.get("source"))) else snapshot.get("name")
    request = Request(kind="eval", options={"target": target, "hf_dir": hf_dir,
                                            "tasks": [t for t in tasks.split(",") if t],
                                            "checkpoint": checkpoint, "all_kept": all_kept},
                      cluster=cluster, gpus=0 if cpus is not None and gpus is None else gpus, cpus=cpus,
                      walltime=walltime, name=name or default_name(target, hf_dir), project=project)
    _report_launch(do_launch(request, dry_run=dry_run), dry_run)


# ---------------------------------------------------------------- finding runs by name
def _runs_roots():
    """Every distinct runs root the known profiles resolve to (SLMJOBS_RUNS_ROOT wins)."""
    import os

    from slmjobs import profiles

    if os.environ.get("SLMJOBS_RUNS_ROOT"):
        return [profiles.expand_root(os.environ["SLMJOBS_RUNS_ROOT"], None)]
    roots = []
    for name in profiles.available():
        try:
            profile = profiles.load(name)
        except UsageError:
            continue  # list-clusters reports broken profiles; status just skips them
        project = profiles.project_of(None, profile)
        if "{project}" in profile["runs_root"] and not project:
            continue
        root = profiles.runs_root(profile, project)
        if root not in roots:
            roots.append(root)
    return roots


def _all_runs():
    from slmjobs.rundir import is_run_dir

    runs = []
    for root in _runs_roots():
        if root.is_dir():
            runs += sorted(p for p in root.iterdir() if is_run_dir(p))
    return runs


def _find_run(run: str):
    """A run by name (searched in every runs root) or by path."""

    from slmjobs.rundir import is_run_dir

    path = Path(run).expanduser()
    if is_run_dir(path):
        return path.resolve()
    if "/" in run:
        raise UsageError(f"{run} is not a run directory (no run.yaml)")
    found = [root / run for root in _runs_roots() if is_run_dir(root / run)]
    if not found:
        roots = ", ".join(str(r) for r in _runs_roots()) or "(none)"
        raise UsageError(f"unknown run {run!r}: no such run in {roots} (see `slmjobs status`)")
    if len(found) > 1:
        raise UsageError(f"run name {run!r} is ambiguous: {', '.join(map(str, found))}; give the path")
    return found[0]


def _find_sweep(name: str):
    """A sweep's directory by its name (searched in every runs root) or by path; None when
    there is no such sweep."""
    from slmjobs import throttle

    path = Path(name).expanduser()
    if throttle.is_sweep_dir(path):
        return path.resolve()
    found = [throttle.sweep_dir(root, name) for root in _runs_roots()
             if "/" not in name and throttle.is_sweep_dir(throttle.sweep_dir(root, name))]
    if len(found) > 1:
        raise UsageError(f"sweep name {name!r} is ambiguous: {', '.join(map(str, found))}; "
                         "give the path")
    return found[0] if found else None


def _runs_or_sweeps(names):
    """The run directories `names` stand for (a sweep stands for its members) and the sweeps
    among them, as their sweep.yaml records."""
    from slmjobs.rundir import is_run_dir

    run_dirs, sweeps = [], []
    for name in names:
        sweep_path = None if is_run_dir(Path(name).expanduser()) else _find_sweep(name)
        if sweep_path is None:
            run_dirs.append(_find_run(name))
            continue
        from slmjobs import sweep

        sweeps.append(sweep.load(sweep_path))
        run_dirs += [Path(m["run_dir"]) for m in sweeps[-1]["members"]]
    return run_dirs, sweeps


def _sweep_or_fail(name: str):
    found = _find_sweep(name)
    if found is None:
        raise UsageError(f"unknown sweep {name!r}: no {name}/sweep.yaml under the .sweeps/ of "
                         f"{', '.join(str(r) for r in _runs_roots()) or '(no runs root)'}")
    return found


# ---------------------------------------------------------------- status, logs, cancel
@cli.command(context_settings=CONTEXT)
@click.argument("runs", nargs=-1, metavar="[RUN]...")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts instead of a table.")
@click.option("--watch", "watch_seconds", type=float, is_flag=False, flag_value=5.0, metavar="[SECONDS]",
              help="Redraw every SECONDS (default 5) until every run shown has ended; Ctrl-C quits.")
def status(runs, as_json, watch_seconds):
    """Where every run (or the named ones) stands: link, job state, step, loss, ETA. A sweep's
    name stands for its members, with a summary line."""
    import json

    from slmjobs import monitor, table

    if watch_seconds is not None:
        from slmjobs.watch import watch

        if as_json:
            raise UsageError("--watch with --json: allowed: one of them")
        return watch(lambda: _runs_or_sweeps(runs)[0] if runs else _all_runs(), watch_seconds)
    run_dirs, sweeps = _runs_or_sweeps(runs) if runs else (_all_runs(), [])
    rows = monitor.run_statuses(run_dirs)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    elif rows:
        click.echo(table.format_table(rows))
    else:
        click.echo("no runs yet (slmjobs launch MODEL to start one)")
    if sweeps and not as_json:
        from slmjobs import sweep

        for record in sweeps:
            members = {m["run_dir"] for m in record["members"]}
            click.echo(sweep.summary_line(record, [r for r in rows if r["run_dir"] in members]))
    unreachable = [r for r in rows if r.get("scheduler_unreachable")]
    if unreachable:  # the table is printed, but it cannot be trusted: say so, and fail
        click.echo(f"slmjobs: the scheduler could not be asked about {len(unreachable)} run(s) "
                   f"(state 'unknown'): {unreachable[0]['job_reason']}", err=True)
        return 1


@cli.command(context_settings=CONTEXT)
@click.argument("run")
@click.option("--follow", "-f", is_flag=True, help="Keep following across links until the run ends.")
def logs(run, follow):
    """Print a run's job logs, link by link."""
    from slmjobs.logs import follow_logs

    return follow_logs(_find_run(run), follow)


@cli.command(context_settings=CONTEXT)
@click.argument("run")
def cancel(run):
    """Stop a run's chain: delete every queued, held or running job of it."""
    from slmjobs.chain import cancel_run

    run_dir = _find_run(run)
    job_ids = cancel_run(run_dir)
    jobs = ", ".join(job_ids) if job_ids else "none were queued or running"
    click.echo(f"run {run_dir.name} cancelled; jobs deleted: {jobs}\n"
               f"resume it with: slmjobs resume {run_dir.name}")


@cli.command(context_settings=CONTEXT)
@click.argument("run")
@click.option("--walltime", metavar="HH:MM:SS", help="New walltime for the next links.")
def resume(run, walltime):
    """Restart a stopped or cancelled run from its latest checkpoint."""
    from slmjobs.chain import resume_run

    run_dir = _find_run(run)
    job_id = resume_run(run_dir, walltime=walltime)
    click.echo(f"run {run_dir.name} resumed: next link submitted as job {job_id}\n"
               f"  slmjobs status {run_dir.name}")


@cli.command(context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("-o", "--output", metavar="FILE.png", help="Where to write (default: the first RUN's plots/METRIC.png).")
@click.option("--metric", metavar="METRIC", default="loss", show_default=True,
              help="loss, val_loss, bits_per_byte, lr or tokens_per_sec.")
@click.option("--x", "x_axis", metavar="AXIS", default="step", show_default=True,
              help="step, tokens or hours (training time: no queue waits).")
def plot(runs, output, metric, x_axis):
    """Plot a metric of one or more runs across all their links, as a PNG; print its path. A
    sweep's name overlays its members, each labelled with its overrides."""
    from pathlib import Path

    from slmjobs.plot import has_history, plot as draw_plot

    run_dirs, labels = [], []
    for r in runs:
        sweep_path = None if has_history(Path(r)) else _find_sweep(r)
        if sweep_path is None:
            run_dirs.append(Path(r).resolve() if has_history(Path(r)) else _find_run(r))
            labels.append(run_dirs[-1].name)
            continue
        from slmjobs import sweep

        members = sweep.load(sweep_path)["members"]
        run_dirs += [Path(m["run_dir"]) for m in members]
        labels += [" ".join(m["overrides"]) or m["name"] for m in members]
        if output is None:  # a sweep's plot belongs to the sweep, not to its first member
            output = str(Path(sweep_path) / "plots" / f"{metric}.png")
    click.echo(draw_plot(run_dirs, metric=metric, x=x_axis, output=output, labels=labels))


# ---------------------------------------------------------------------------- sweeps
class _SweepGroup(click.Group):
    """`slmjobs sweep MODEL ...` starts a sweep; `slmjobs sweep table|resume|cancel|add S` steer
    one: a first word that is not a subcommand is the model of a new sweep."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in CONTEXT["help_option_names"]:
            args = ["start", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_SweepGroup, context_settings=CONTEXT)
def sweep():
    """Many chained runs from one command, at most K holding a scheduler slot at once.

    \b
      slmjobs sweep tiny --name lrs --max-running 2 train.lr=3e-4,6e-4 seed=range(2)
      slmjobs status lrs                       # one row per member, and a summary line
      slmjobs sweep table lrs --metric val_loss
      slmjobs plot lrs --metric val_loss
      slmjobs sweep resume lrs --failed | sweep cancel lrs | sweep add lrs train.lr=1.2e-3
    """


@sweep.command("start", context_settings=CONTEXT)
@click.argument("model")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED, metavar="[HYDRA_OVERRIDE]...")
@click.option("--name", required=True, help="The sweep's name; members are NAME-<values>.")
@click.option("--max-running", type=int, default=1, show_default=True,
              help="Most members holding a scheduler slot at once (K).")
@click.option("--gpus", type=int, default=1, show_default=True, help="GPUs of each member.")
@click.option("--cluster", metavar="NAME|PATH", help="Cluster profile name or file.")
@click.option("--walltime", metavar="HH:MM:SS", help="Walltime of each link.")
@click.option("--max-links", type=int, help="Most jobs each member's chain may use.")
@click.option("--project", help="Scheduler project (-P).")
@click.option("--dry-run", is_flag=True, help="Print the members and the first member's script.")
def sweep_start(model, overrides, name, max_running, gpus, cluster, walltime, max_links, project,
                dry_run):
    """Start a sweep of MODEL over hydra's sweep grammar: key=a,b,c, key=range(N), choice(...),
    glob(...); every combination is one member, an ordinary chained run."""
    import os

    from slmjobs import sweep as sweeps

    request = {"cluster": str(Path(cluster).resolve()) if cluster and Path(cluster).is_file()
               else cluster, "gpus": gpus, "walltime": walltime, "max_links": max_links,
               "project": project, "workdir": os.getcwd()}  # what `sweep add` launches with too
    result = sweeps.start(name, model, list(overrides), max_running, request, dry_run=dry_run)
    _report_members(result["specs"])
    if dry_run:
        click.echo(f"# link 1 of {result['specs'][0]['name']}:")
        click.echo(result["script"], nl=False)
        return
    click.echo(f"sweep {name}: {len(result['specs'])} members, at most {max_running} at once; "
               f"the rest wait held\n"
               f"sweep dir: {result['sweep_dir']}\n"
               f"next:\n  slmjobs status {name}\n  slmjobs sweep table {name}\n"
               f"  slmjobs sweep cancel {name}")


def _report_members(specs) -> None:
    for spec in specs:
        click.echo(f"member {spec['name']}: {' '.join(spec['overrides'])}")


@sweep.command("add", context_settings=CONTEXT)
@click.argument("name")
@click.argument("overrides", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="HYDRA_OVERRIDE...")
@click.option("--dry-run", is_flag=True, help="Print the new members; create nothing.")
def sweep_add(name, overrides, dry_run):
    """More members of sweep NAME (its other overrides, these replacing theirs), under the
    same throttle."""
    from slmjobs import sweep as sweeps

    result = sweeps.add(_sweep_or_fail(name), list(overrides), dry_run=dry_run)
    _report_members(result["specs"])
    if not dry_run:
        click.echo(f"sweep {name}: {len(result['specs'])} members added, held until a slot is "
                   f"free (released now: {len(result['released'])})")


@sweep.command("table", context_settings=CONTEXT)
@click.argument("name")
@click.option("--metric", default="val_loss", show_default=True,
              help="loss, val_loss, bits_per_byte, lr or tokens_per_sec.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV instead of a table.")
def sweep_table(name, metric, as_json, as_csv):
    """Per member: its overrides, final and best METRIC, tokens, GPU-hours and state; best
    first."""
    from slmjobs import monitor, sweep as sweeps
    from slmjobs.table import Column, format_table, number

    if as_json and as_csv:
        raise UsageError("--json with --csv: allowed: one of them")
    path = _sweep_or_fail(name)
    record = sweeps.load(path)
    rows = sweeps.table_rows(record, monitor.run_statuses(sweeps.member_dirs(path)), metric)
    if as_json:
        import json

        click.echo(json.dumps(rows, indent=2))
    elif as_csv:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["name"])
        writer.writeheader()
        writer.writerows(rows)
    else:
        click.echo(format_table(rows, [
            Column("MEMBER", "name"), Column("OVERRIDES", "overrides"),
            Column(f"FINAL {metric.upper()}", f"final_{metric}", number(f"final_{metric}", ".4f")),
            Column(f"BEST {metric.upper()}", f"best_{metric}", number(f"best_{metric}", ".4f")),
            Column("TOKENS", "tokens", number("tokens", ",d")),
            Column("GPU-H", "gpu_hours", number("gpu_hours", ".2f")), Column("STATE", "state")]))


@sweep.command("resume", context_settings=CONTEXT)
@click.argument("name")
@click.option("--failed", is_flag=True, help="Only the members that stopped (not the cancelled).")
def sweep_resume(name, failed):
    """Resume the members of sweep NAME that stopped (and, without --failed, those cancelled),
    under the sweep's throttle."""
    from slmjobs import monitor, sweep as sweeps

    path = _sweep_or_fail(name)
    rows = monitor.run_statuses(sweeps.member_dirs(path))
    resumed = sweeps.resume(path, rows, include_cancelled=not failed)
    click.echo(f"sweep {name}: resumed {', '.join(resumed) if resumed else 'no member (none stopped)'}"
               f"\n  slmjobs status {name}")


@sweep.command("cancel", context_settings=CONTEXT)
@click.argument("name")
def sweep_cancel(name):
    """Cancel every member of sweep NAME that has not finished."""
    from slmjobs import sweep as sweeps

    deleted = sweeps.cancel(_sweep_or_fail(name))
    jobs = sorted(j for ids in deleted.values() for j in ids)
    click.echo(f"sweep {name} cancelled: {len(deleted)} members; jobs deleted: "
               f"{', '.join(jobs) or 'none were queued or running'}\n"
               f"resume it with: slmjobs sweep resume {name}")


# ------------------------------------------------------------------- profiles, data
@cli.command("list-clusters", context_settings=CONTEXT)
def list_clusters():
    """The cluster profiles you can name with --cluster, and what they resolve to."""
    from slmjobs import profiles

    default = profiles.default_cluster()
    click.echo(f"user profiles: {profiles.config_dir() / 'clusters'}   default: {default}")
    for name, path in profiles.available().items():
        mark = "*" if name == default else " "
        try:
            p = profiles.load(name)
        except UsageError as exc:
            click.echo(f"{mark} {name:<10} INVALID: {exc}")
            continue
        project = profiles.project_of(None, p)
        if "{project}" in p["runs_root"] and not project:
            root = f"{p['runs_root']} (needs a project)"
        else:
            root = str(profiles.runs_root(p, project))
        click.echo(f"{mark} {name:<10} {p['scheduler']:<6} max {p['max_gpus']} GPUs, walltime "
                   f"{p['walltime_default']} (max {p['walltime_max']}), hand-off margin "
                   f"{p['handoff_margin']} s\n"
                   f"  {'':<10} from {p['source']}\n"
                   f"  {'':<10} runs in {root}")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def prepare(args):
    """Prepare a dataset: forwards to `python -m trainer.prepare ARGS` (try `prepare --help`).
    With --submit: as a chain of CPU-only jobs instead (try `prepare --submit --help`)."""
    if "--submit" in args:
        return prepare_job.main(args=list(args), prog_name="slmjobs prepare", standalone_mode=False)
    _become_worker("trainer.prepare", list(args))


def _become_worker(module, args):
    """Replace this process with `python -m MODULE ARGS`: one process, so a kill of the pid the
    user sees (or a job's end) ends the work too; a child would run on to the end. The worker's
    exit status and its one-line errors are the command's."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *args])


@click.command(context_settings={**CONTEXT, "ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="PREPARE_OPTION...")
@click.option("--submit", is_flag=True, required=True, help="Run it as a chain of CPU-only jobs.")
@click.option("--cpus", type=int, help="CPU slots (-pe omp N on Grid Engine; default: the profile's "
              "cpus_per_gpu); the worker tokenizes with that many processes.")
@click.option("--cluster", metavar="NAME|PATH",
              help="Cluster profile name or file (default: env SLMJOBS_CLUSTER, user config, local).")
@click.option("--walltime", metavar="HH:MM:SS", help="Walltime of each link (default: the profile's; "
              "CPU-only jobs may ask up to its walltime_max_cpu).")
@click.option("--name", help="Run name (default: prepare-YYYYmmdd-HHMMSS).")
@click.option("--max-links", type=int, help="Most jobs the chain may use (default: the profile's).")
@click.option("--project", help="Scheduler project (-P); default env SLMJOBS_PROJECT or the profile's.")
@click.option("--dry-run", is_flag=True, help="Print the exact job script; write and submit nothing.")
@click.option("--validate", is_flag=True, help="Ask the scheduler (qsub -w v) whether it can ever run.")
def prepare_job(args, submit, cpus, cluster, walltime, name, max_links, project, dry_run, validate):
    """Prepare a dataset as a run of kind `prepare`: CPU-only jobs chained across walltime
    limits, each continuing from the preparation's journal. PREPARE_OPTIONs are those of
    `slmjobs prepare --help` (--source, --out, --tokenizer, ...). Then train on it with
    `slmjobs launch MODEL data.path=OUT --after NAME`.
    """
    from slmjobs.launch import Request, launch as do_launch

    request = Request(kind="prepare", options={"args": list(args)}, cluster=cluster, cpus=cpus,
                      walltime=walltime, name=name, max_links=max_links, project=project)
    result = do_launch(request, dry_run=dry_run, validate=validate)
    _report_launch(result, dry_run)


@cli.group("eval-data", context_settings=CONTEXT)
def eval_data():
    """Evaluation data for jobs, which have no network (run on a login node)."""


@eval_data.command("fetch", context_settings=CONTEXT)
@click.argument("task", metavar="hellaswag")
@click.option("--file", metavar="PATH", help="Copy this local file instead of downloading the original.")
@click.option("--cluster", metavar="NAME|PATH", help="Cluster profile whose data_root receives it.")
def eval_data_fetch(task, file, cluster):
    """Download (or copy with --file) TASK's items to <data_root>/evals/TASK/, checked against the
    pinned hash, with a manifest written last."""
    from pathlib import Path

    from slmjobs import evaldata, profiles

    profile = profiles.load(cluster)
    root = profiles.data_root(profile, profiles.project_of(None, profile)) or Path("data").absolute()
    folder, manifest, warnings = evaldata.fetch(task, root, file)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{task}: {manifest['items']} items in {folder} (git blob {manifest['git_blob'][:12]})")


# ------------------------------------------------------------------ sample, export
def _forward_to_worker(module, run, options):
    """Become `python -m trainer.MODULE RUN_DIR --option value ...` with the options the user gave
    (the worker owns the defaults and the checks; torch lives there, never in the CLI)."""
    args = []
    for name, value in options.items():
        if value is True:
            args.append(f"--{name.replace('_', '-')}")
        elif value not in (None, False):
            args += [f"--{name.replace('_', '-')}", str(value)]
    _become_worker(module, [str(_find_run(run)), *args])


@cli.command(context_settings=CONTEXT)
@click.argument("run")
@click.option("--prompt", metavar="TEXT", help="Text to continue (default: start after end-of-text).")
@click.option("--max-new-tokens", metavar="N", help="Most tokens to generate (default 200).")
@click.option("--temperature", metavar="T", help="Softmax temperature, 0 = greedy (default 0.8).")
@click.option("--top-k", metavar="K", help="Draw from the K likeliest tokens only (default 200).")
@click.option("--seed", metavar="S", help="Random seed: the same seed gives the same text (default 1337).")
@click.option("--checkpoint", metavar="PATH", help="A checkpoint file (default: the newest intact one).")
@click.option("--device", metavar="auto|cpu|cuda", help="Where to run the model (default auto).")
def sample(run, **options):
    """Print the text the run's newest intact checkpoint writes after --prompt."""
    return _forward_to_worker("trainer.sample", run, options)


@cli.command(context_settings=CONTEXT)
@click.argument("run")
@click.option("--out", metavar="DIR", required=True, help="The Hugging Face model directory to write.")
@click.option("--checkpoint", metavar="PATH", help="A checkpoint file (default: the newest intact one).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def export(run, **options):
    """Write the run's newest intact checkpoint as a Hugging Face GPT-2 model directory, which
    transformers alone loads: AutoModelForCausalLM / AutoTokenizer.from_pretrained(DIR),
    pipeline("text-generation", model=DIR)."""
    return _forward_to_worker("trainer.export", run, options)


# ------------------------------------------------------------------------ entry point
def main(argv=None) -> None:
    try:
        code = cli.main(args=argv, prog_name="slmjobs", standalone_mode=False)
    except UsageError as exc:
        click.echo(f"slmjobs: error: {exc}", err=True)
        sys.exit(UsageError.exit_code)
    except RuntimeError as exc:
        # SchedulerError and friends: the scheduler failed, not the user's input (exit 1)
        from slmjobs.backends import SchedulerError

        if not isinstance(exc, SchedulerError):
            raise
        click.echo(f"slmjobs: scheduler error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:  # a full, read-only or closed filesystem: one line, as the worker's
        from slmjobs.rundir import filesystem_failure

        failure = filesystem_failure(exc)
        if failure is None:
            raise
        click.echo(f"slmjobs: error: {failure[1]}", err=True)
        sys.exit(failure[0])
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # click's own parse errors: one line too, exit 2
        where = exc.ctx.command_path if exc.ctx else "slmjobs"
        click.echo(f"slmjobs: error: {exc.format_message()} (see `{where} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
