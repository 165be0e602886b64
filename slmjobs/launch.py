"""`slmjobs launch` (and every kind's own launch command), in four steps:

    request  ->  check  ->  create  ->  submit
    Request     spec: everything checkable is checked before anything exists
                         the run directory, run.yaml (exclusive: two launches of one name
                         cannot both get here)
                                   link 1 (or nothing yet: a run that waits for another)

`resolve` turns a Request into the run spec (run.yaml's contents) with the checks every kind
shares (profile, resources, walltime, name, project, paths) and the kind's own request checks;
`check` runs the kind's launch-time checks (they may read files); `create` makes the run
directory; `submit` submits link 1, or records that the run waits. Any failure after `create`
removes the run directory again: no run dir left behind, nothing left queued.

Run names: an existing run directory is never reused, whatever its state (a finished run's
checkpoints would be autoresumed by the trainer and its ledger mixed with the new run's). The
error says whether the run is active and points to `slmjobs cancel` / `slmjobs resume` / `--name`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from slmjobs import kinds, over, profiles, rundir, submit
from slmjobs.backends import get_backend
from slmjobs.errors import UsageError

# Grid Engine rejects spaces, ':' and '/' in job names and a leading digit (FINDINGS P5); the name
# is also a directory name and a `#$ -N` value, so keep it to a plain, portable charset.
RUN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class Request:
    """What a launch asks for. `options` are the kind's own (train: model, overrides);
    `gpus=None` means the kind's default (0 for a CPU-only kind). `after`: a run (name or
    directory) whose finish submits this run's first link."""
    kind: str = "train"
    options: dict = field(default_factory=dict)
    cluster: str | None = None
    gpus: int | None = None
    cpus: int | None = None
    walltime: str | None = None
    name: str | None = None
    max_links: int | None = None
    project: str | None = None
    after: str | None = None
    python: str | None = None   # the job's interpreter (default: this one)
    workdir: str | None = None  # the job's working directory (default: here)


# ----------------------------------------------------------------------- shared checks
def check_run_name(name: str) -> None:
    if not RUN_NAME.match(name):
        raise UsageError(f"bad run name {name!r}: allowed is a letter followed by letters, digits, "
                         "'_', '.' or '-' (at most 100 characters; Grid Engine rejects spaces, "
                         "':', '/' and a leading digit)")


def check_resources(kind, gpus: int, cpus: int | None, profile: dict) -> None:
    if gpus < kind.gpus_min or gpus > profile["max_gpus"]:
        raise UsageError(f"--gpus {gpus} is not allowed on cluster {profile['name']!r}: "
                         f"allowed is {kind.gpus_min} to {profile['max_gpus']}")
    if cpus is not None and cpus < 1:
        raise UsageError(f"--cpus {cpus}: allowed is 1 or more")


def resolve_project(flag: str | None, profile: dict) -> str | None:
    project = profiles.project_of(flag, profile)
    if not get_backend(profile["scheduler"]).USES_PROJECT:
        return None
    if project is None and profile["project_required"]:
        raise UsageError(f"cluster {profile['name']!r} requires a project: allowed is --project P, "
                         "env SLMJOBS_PROJECT, or `project:` in the profile or the user config")
    if project is not None and not profiles.SAFE_WORD.match(project):
        raise UsageError(f"bad project {project!r}: allowed are letters, digits and _.-")
    return project


def check_safe_path(path: Path, what: str) -> None:
    """Paths go into `#$ -o/-wd` lines, which Grid Engine does not unquote."""
    if not profiles.SAFE_WORD.match(str(path)):
        raise UsageError(f"{what} {str(path)!r} cannot go into a job directive: allowed are paths of "
                         "letters, digits and _.,:=+@%/~- (no spaces or shell characters)")


def default_run_name(base: str, runs_root: Path) -> str:
    base = f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = base, 1
    while (runs_root / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def worker_bin_dir(python: str, requires: str | None) -> str:
    """The directory the job puts first on PATH so that the kind's program (`composer`)
    resolves: the interpreter's own bin dir (a venv), else wherever the program is found now
    (e.g. ~/.local/bin)."""
    here = os.path.dirname(python)
    if requires is None or os.access(os.path.join(here, requires), os.X_OK):
        return here
    found = shutil.which(requires)
    if found:
        return os.path.dirname(os.path.abspath(found))
    raise UsageError(f"{requires} not found next to {python} or on PATH: allowed is a Python "
                     "environment with slmjobs' training stack (pip install slmjobs), or a profile "
                     "whose env_setup provides one (python: ...)")


# ------------------------------------------------------------------- 1. the request
def resolve(request: Request) -> dict:
    """The run spec (what run.yaml holds) for `request`. Raises UsageError for anything
    wrong; touches nothing."""
    kind = kinds.by_name(request.kind)
    profile = profiles.load(request.cluster)
    gpus = kind.gpus_default if request.gpus is None else request.gpus
    check_resources(kind, gpus, request.cpus, profile)
    walltime = profiles.check_walltime(request.walltime or profile["walltime_default"], profile, gpus)
    fields = kind.spec_fields(request.options, profile)
    project = resolve_project(request.project, profile)
    if request.max_links is not None and request.max_links < 1:
        raise UsageError(f"--max-links {request.max_links}: allowed is 1 or more")
    root = profiles.runs_root(profile, project)
    name = request.name or default_run_name(fields.get("model") or kind.name, root)
    check_run_name(name)
    run_dir = root / name
    check_safe_path(run_dir, "run directory")
    workdir = request.workdir or os.getcwd()
    check_safe_path(Path(workdir), "working directory")
    data_root = profiles.data_root(profile, project)
    # The job runs the launcher's own interpreter (not resolved: a venv's bin/python symlink
    # must stay inside the venv so its bin dir, with `composer`, goes on PATH).
    python = request.python or os.path.abspath(sys.executable)
    spec = {
        "name": name,
        "kind": kind.name,
        "run_dir": str(run_dir),
        **fields,
        "gpus": gpus,
        "cpus": request.cpus,
        "walltime": walltime,
        "project": project,
        "workdir": workdir,
        "python": python,
        "bin_dir": None,
        "data_root": str(data_root) if data_root else None,
        "chain": {**profile["chain"], **({"max_links": request.max_links} if request.max_links else {})},
        "cluster": profile,
        "templates_dir": str(profiles.config_dir() / "templates"),
        "then": over.default_actions(profile),
        "after": resolve_after(request.after),
    }
    get_backend(profile["scheduler"]).check_request(profile, spec)
    requires = kind.command(spec).requires
    spec["bin_dir"] = (worker_bin_dir(python, requires)
                       if request.python is None and profile["python"] is None
                       else os.path.dirname(python))
    return spec


def resolve_after(after: str | None) -> str | None:
    """The run directory of the run to wait for (a name in this runs root, or a path)."""
    if after is None:
        return None
    path = Path(after).expanduser()
    if not rundir.is_run_dir(path):
        raise UsageError(f"--after {after}: not a run directory (no {rundir.RUN_FILE}); allowed is "
                         "a run's directory (see `slmjobs status`)")
    return str(path.resolve())


# ------------------------------------------------------------------- 2. check
def check(spec: dict, *, dry_run: bool = False) -> None:
    """The kind's launch-time checks (they may read files: configuration, data)."""
    kinds.of(spec).check(spec, dry_run=dry_run)


def validate_with_scheduler(spec: dict, text: str) -> str:
    """Ask the scheduler whether this script could ever run; UsageError if not."""
    backend = get_backend(spec["cluster"]["scheduler"])
    backend.check_available(spec["cluster"])
    with tempfile.TemporaryDirectory(prefix="slmjobs-validate-") as tmp:
        path = Path(tmp) / "link-001.sh"
        path.write_text(text, encoding="utf-8")
        ok, message = backend.validate(path)
    if not ok:
        raise UsageError(f"the scheduler rejects this request: {' / '.join(message.split(chr(10)))}")
    return message


# ------------------------------------------------------------------- 3. create
def refuse_existing(run_dir: Path) -> None:
    if not rundir.is_run_dir(run_dir) and not (run_dir / rundir.LEDGER_FILE).exists():
        return  # nothing there, or what a killed launch left: rundir.create takes it over
    name = run_dir.name
    if _is_active(run_dir):
        raise UsageError(f"run name {name!r} belongs to an active run ({run_dir}): allowed is a new "
                         f"--name, or stop it first with `slmjobs cancel {name}`")
    raise UsageError(f"run name {name!r} is taken by an existing run ({run_dir}): allowed is a new "
                     f"--name; continue that run with `slmjobs resume {name}`")


def _is_active(run_dir: Path) -> bool:
    try:
        return bool(submit.active_jobs(run_dir))
    except Exception:  # a broken old run dir must not hide the real message
        return False


def create(spec: dict) -> Path:
    get_backend(spec["cluster"]["scheduler"]).check_available(spec["cluster"])
    run_dir = Path(spec["run_dir"])
    refuse_existing(run_dir)
    record = {**spec, "slmjobs_version": _version(), "git_commit": _git_commit(),
              "created": time.time()}
    try:
        rundir.create(run_dir, record)  # exclusive: two launches of one name cannot both get here
    except FileExistsError:
        refuse_existing(run_dir)
        raise
    return run_dir


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slmjobs")
    except PackageNotFoundError:
        return "unknown"


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


# ------------------------------------------------------------------- 4. submit
def submit_first(run_dir: Path, spec: dict) -> str | None:
    """Link 1's job id; None when the run waits for another (its finish submits link 1)."""
    if spec.get("after"):
        return over.wait_for(spec["after"], run_dir)
    return submit.submit_link(run_dir, 1)


# ------------------------------------------------------------------- the four steps
def launch(request: Request, dry_run: bool = False, validate: bool = False) -> dict:
    """Returns {"spec", "script" (text)} for a dry run, plus {"job_id", "run_dir"} otherwise
    (job_id None: the run waits for `request.after`)."""
    from slmjobs.render import render_link

    spec = resolve(request)
    check(spec, dry_run=dry_run)
    text = render_link(spec, 1)
    result = {"spec": spec, "script": text, "validation": None}
    if validate:
        result["validation"] = validate_with_scheduler(spec, text)
    if dry_run:
        return result
    run_dir = create(spec)
    try:
        # Killed from here on, the run is there with its run.yaml: `slmjobs status` shows it
        # and `slmjobs resume` submits its first link.
        result["job_id"] = submit_first(run_dir, spec)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    result["run_dir"] = str(run_dir)
    return result
