"""`slmjobs launch`: resolve a request -> validate everything -> create the run dir -> render link 1
-> submit -> record (the run directory is rundir's, the submission submit's).

Everything that can be wrong with a request is checked before the run directory exists; any
failure after it was created removes it again (no run dir left behind, nothing left queued).

Run names: an existing run directory is never reused, whatever its state (a finished run's
checkpoints would be autoresumed by the trainer and its ledger mixed with the new run's). The
error says whether the run is active and points to `slmjobs cancel` / `slmjobs resume` / `--name`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slmjobs import profiles, rundir, submit
from slmjobs.backends import get_backend
from slmjobs.errors import UsageError

RESERVED_OVERRIDES = ("model", "run_name", "run_dir")
# Grid Engine rejects spaces, ':' and '/' in job names and a leading digit (FINDINGS P5); the name
# is also a directory name and a `#$ -N` value, so keep it to a plain, portable charset.
RUN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
# Hydra override grammar, the part that matters here: an optional ~ / + / ++ prefix, a dotted
# key (config groups may use / and @), then =value (anything on one line; hydra parses it).
OVERRIDE = re.compile(r"^(~|\+\+?)?[A-Za-z_][A-Za-z0-9_.\-/@]*(=.*)?$", re.DOTALL)


# ----------------------------------------------------------------------- validation
def models_dir() -> Path:
    """trainer/conf/model, found without importing the trainer (it would pull in torch)."""
    spec = importlib.util.find_spec("trainer")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]) / "conf" / "model"
    return Path(__file__).resolve().parent.parent / "trainer" / "conf" / "model"


def available_models() -> list[str]:
    directory = models_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def check_model(model: str) -> None:
    known = available_models()
    if model not in known:
        raise UsageError(f"unknown model {model!r}: allowed are {', '.join(known) or '(none found in ' + str(models_dir()) + ')'}")


def check_run_name(name: str) -> None:
    if not RUN_NAME.match(name):
        raise UsageError(f"bad run name {name!r}: allowed is a letter followed by letters, digits, "
                         "'_', '.' or '-' (at most 100 characters; Grid Engine rejects spaces, "
                         "':', '/' and a leading digit)")


def check_override(override: str) -> None:
    if any(ch in override for ch in "\n\r\0") or not OVERRIDE.match(override):
        raise UsageError(f"malformed hydra override {override!r}: allowed is key=value, +key=value, "
                         "++key=value or ~key, on one line (key: letters, digits, _ . - / @)")
    if "=" not in override and not override.startswith("~"):
        raise UsageError(f"malformed hydra override {override!r}: missing '=value' (allowed is key=value)")
    key = override.lstrip("~+").split("=", 1)[0]
    if key in RESERVED_OVERRIDES:
        raise UsageError(f"override {override!r} is set by slmjobs: give the model as MODEL and the "
                         "name with --name (the run dir follows from the cluster's runs_root)")


def check_gpus(gpus: int, profile: dict) -> None:
    if gpus < 1 or gpus > profile["max_gpus"]:
        raise UsageError(f"--gpus {gpus} is not allowed on cluster {profile['name']!r}: "
                         f"allowed is 1 to {profile['max_gpus']}")


def check_walltime(walltime: str, profile: dict, gpus: int) -> str:
    seconds = profiles.parse_walltime(walltime, "--walltime")
    maximum = profiles.walltime_max(profile, gpus)
    if seconds > profiles.parse_walltime(maximum):
        kind = "a GPU job" if gpus else "a CPU-only job"
        raise UsageError(f"--walltime {walltime} is over the maximum for {kind} on cluster "
                         f"{profile['name']!r}: allowed is up to {maximum}")
    if seconds <= profile["handoff_margin"]:
        raise UsageError(f"--walltime {walltime} is not longer than the hand-off margin of cluster "
                         f"{profile['name']!r} ({profile['handoff_margin']} s): allowed is more than that")
    return profiles.format_walltime(seconds)


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


def default_run_name(model: str, runs_root: Path) -> str:
    base = f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = base, 1
    while (runs_root / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


# ------------------------------------------------------------------------ the request
def resolve(model: str, gpus: int = 1, cluster: str | None = None, walltime: str | None = None,
            name: str | None = None, max_links: int | None = None, project: str | None = None,
            overrides=(), python: str | None = None, workdir: str | None = None) -> dict:
    """Turn the command-line request into the run spec (what run.yaml holds). Raises UsageError
    for anything wrong; touches nothing."""
    profile = profiles.load(cluster)
    check_model(model)
    check_gpus(gpus, profile)
    walltime = check_walltime(walltime or profile["walltime_default"], profile, gpus)
    for override in overrides:
        check_override(override)
    project = resolve_project(project, profile)
    if max_links is not None and max_links < 1:
        raise UsageError(f"--max-links {max_links}: allowed is 1 or more")
    get_backend(profile["scheduler"]).check_request(profile, gpus, model)
    root = profiles.runs_root(profile, project)
    if name is None:
        name = default_run_name(model, root)
    check_run_name(name)
    run_dir = root / name
    check_safe_path(run_dir, "run directory")
    workdir = workdir or os.getcwd()
    check_safe_path(Path(workdir), "working directory")
    data_root = profiles.data_root(profile, project)
    if python is None:
        python = os.path.abspath(sys.executable)
        bin_dir = worker_bin_dir(python) if profile["python"] is None else os.path.dirname(python)
    else:
        bin_dir = os.path.dirname(python)
    return {
        "name": name,
        "kind": "train",
        "run_dir": str(run_dir),
        "model": model,
        "gpus": gpus,
        "walltime": walltime,
        "overrides": list(overrides),
        "project": project,
        "workdir": workdir,
        # The job runs the launcher's own interpreter (not resolved: a venv's bin/python symlink
        # must stay inside the venv so its bin dir, with `composer`, goes on PATH).
        "python": python,
        "bin_dir": bin_dir,
        "data_root": str(data_root) if data_root else None,
        "chain": {**profile["chain"], **({"max_links": max_links} if max_links else {})},
        "cluster": profile,
        "templates_dir": str(profiles.config_dir() / "templates"),
    }


def worker_bin_dir(python: str) -> str:
    """The directory the job puts first on PATH so that `composer` resolves: the interpreter's
    own bin dir (a venv), else wherever `composer` is found now (e.g. ~/.local/bin)."""
    here = os.path.dirname(python)
    if os.access(os.path.join(here, "composer"), os.X_OK):
        return here
    found = shutil.which("composer")
    if found:
        return os.path.dirname(os.path.abspath(found))
    raise UsageError(f"composer not found next to {python} or on PATH: allowed is a Python "
                     "environment with slmjobs' training stack (pip install slmjobs), or a profile "
                     "whose env_setup provides one (python: ...)")


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


# --------------------------------------------------------- changing a run's request
def set_walltime(run_dir, walltime: str) -> str:
    """Change the walltime of the run's next links (`slmjobs resume --walltime`): checked against
    the run's own profile snapshot, written to run.yaml; returns it as HH:MM:SS."""
    spec = rundir.load_run(run_dir)
    spec["walltime"] = check_walltime(walltime, spec["cluster"], spec["gpus"])
    rundir.save_run(run_dir, spec)
    return spec["walltime"]


# -------------------------------------------------------------------------- launch
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
    from slmjobs.monitor import is_active

    try:
        return is_active(run_dir)
    except Exception:  # a broken old run dir must not hide the real message
        return False


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


# ------------------------------------------------------------- can it ever train?
def check_training_config(spec: dict, environ=None) -> dict:
    """The worker's own checks on the composed configuration (trainer.validate: no torch, no
    hydra for what the launcher passes), run here and now as the job would run them: the data
    root the job gets, relative paths from its working directory. A typo, a missing dataset or
    a batch the ranks cannot split is refused before anything is submitted, not after a queue
    wait. Returns the composed configuration."""
    from slmjobs.render import worker_args

    try:
        from trainer.errors import BadInput
        from trainer.validate import compose, validate
    except ImportError as exc:
        raise UsageError(f"could not check the training configuration ({exc}): allowed is a "
                         "Python environment with slmjobs' worker (pip install slmjobs)") from None
    # the job's SLMJOBS_DATA_ROOT: the spec's data_root, else (as here) the environment's
    data_root = Path(spec["data_root"]) if spec.get("data_root") else None
    try:
        plan = validate(compose(worker_args(spec)), world_size=spec["gpus"], data_root=data_root,
                        workdir=Path(spec["workdir"]))
    except BadInput as exc:
        raise UsageError(str(exc)) from None
    check_wandb(plan.config["wandb"], os.environ if environ is None else environ)
    return plan.config


# The shape wandb 0.31 itself requires of a key (wandb/sdk/lib/wbauth/validation.py): an
# optional on-prem prefix and a dash, then 40+ letters, digits, '_' or '-'; or a JWT.
WANDB_KEY = re.compile(r"^(?:[^-]*-)?[\w-]{40,}$|^[\w-]+\.[\w-]+\.[\w-]+$")


def check_wandb(wandb: dict, environ) -> None:
    """What can be known about wandb without the network: its mode, and the shape of a key.
    The key itself is never printed."""
    if not wandb["enabled"] or wandb["mode"] == "offline":
        return
    key = environ.get("WANDB_API_KEY")
    if key is not None and not WANDB_KEY.match(key):
        raise UsageError(f"WANDB_API_KEY is not a wandb API key ({len(key)} characters; wandb "
                         "wants 40 or more letters, digits and '_'): allowed is a key from "
                         "https://wandb.ai/authorize, or wandb.mode=offline")
    if wandb["mode"] == "online" and key is None and not _netrc_has_wandb(environ):
        raise UsageError("wandb.mode=online but no wandb credentials here (no WANDB_API_KEY, no "
                         "wandb entry in ~/.netrc): allowed is `wandb login`, WANDB_API_KEY, "
                         "or wandb.mode=auto|offline")


def _netrc_has_wandb(environ) -> bool:
    path = environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "wandb" in handle.read()
    except OSError:
        return False


def launch(model: str, gpus: int = 1, cluster: str | None = None, walltime: str | None = None,
           name: str | None = None, max_links: int | None = None, project: str | None = None,
           overrides=(), dry_run: bool = False, validate: bool = False) -> dict:
    """Returns {"spec", "script" (text)} for a dry run, plus {"job_id", "run_dir"} otherwise."""
    from slmjobs.render import render_link

    spec = resolve(model, gpus, cluster, walltime, name, max_links, project, overrides)
    check_training_config(spec)
    text = render_link(spec, 1)
    result = {"spec": spec, "script": text, "validation": None}
    if validate:
        result["validation"] = validate_with_scheduler(spec, text)
    if dry_run:
        return result
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
    try:
        # Killed from here on, the run is there with its run.yaml: `slmjobs status` shows it
        # and `slmjobs resume` submits its first link.
        result["job_id"] = submit.submit_link(run_dir, 1)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    result["run_dir"] = str(run_dir)
    return result
