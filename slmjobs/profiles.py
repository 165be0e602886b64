"""Cluster profiles: one YAML file per cluster, validated on load.

Where profiles come from, first match wins:
  1. `--cluster path/to/profile.yaml` (anything with a `/` or ending in .yaml/.yml is a path);
  2. the user's config dir: `$SLMJOBS_CONFIG_DIR/clusters/NAME.yaml`
     (default `${XDG_CONFIG_HOME:-~/.config}/slmjobs/clusters/NAME.yaml`), so users add or shadow
     profiles without touching the package;
  3. the shipped profiles (scc, sge, slurm, local): the repository's `cluster/` folder, which the
     package sees as `slmjobs/clusters` (a symlink in the source tree, real files in a wheel).

The default profile is env SLMJOBS_CLUSTER, else `cluster:` in `<config dir>/config.yaml`, else
`local`. Env SLMJOBS_RUNS_ROOT and SLMJOBS_DATA_ROOT override the profile's roots (tests use them).

Every error names the file, the key and what is allowed, and is a UsageError (exit 2).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from slmjobs import backends
from slmjobs.backends.core import SAFE_WORD
from slmjobs.errors import UsageError

SHIPPED_DIR = (Path(__file__).parent / "clusters").resolve()   # ../cluster in the source tree

_HMS = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")


# ------------------------------------------------------------------------ schema
# key -> (allowed types, default, description of what is allowed). A default of REQUIRED means
# the key must be present.
REQUIRED = object()
_STR, _INT, _BOOL, _LIST, _DICT = (str,), (int,), (bool,), (list,), (dict,)
_OPT_STR = (str, type(None))
# The keys every profile has; its scheduler's backend adds its own (Backend.PROFILE_KEYS).
SCHEMA: dict[str, tuple] = {
    "scheduler": (_STR, REQUIRED, "a scheduler in slmjobs.backends.REGISTRY, or a module that "
                                  "defines BACKEND"),
    "description": (_STR, "", "a string"),
    "shell": (_STR, "/bin/bash", "an interpreter for the #! line, e.g. '/bin/bash -l'"),
    "python_module": (_OPT_STR, None,
                      "the module with the Python the venv was built with (loaded first), or null"),
    "modules": (_LIST, [], "a list of module names to `module load`"),
    "env_setup": (_LIST, [], "a list of shell lines run before the worker"),
    "env": (_DICT, {}, "a mapping NAME: value of extra environment variables"),
    "python": (_OPT_STR, None,
               "null (the launcher's own Python) or a command/path valid after env_setup"),
    "max_gpus": (_INT, REQUIRED, "a positive integer"),
    # YAML 1.1 reads an unquoted 12:00:00 as the base-60 integer 43200: accept that as seconds.
    "walltime_default": ((str, int), "12:00:00", "HH:MM:SS"),
    "walltime_max": ((str, int), "720:00:00", "HH:MM:SS (the most a GPU job may ask for)"),
    "walltime_max_cpu": ((str, int, type(None)), None,
                         "HH:MM:SS (the most a CPU-only job may ask for), or null: walltime_max"),
    "handoff_margin": ((int, str), 300, "seconds (an integer) or HH:MM:SS"),
    # A busy qmaster says so for a while: how long one submission keeps trying, in all.
    "submit_retry_seconds": (_INT, 180, "seconds (0 or more) to keep retrying a submission"),
    "runs_root": (_STR, "./runs", "a directory"),
    "data_root": (_OPT_STR, None, "a directory or null"),
    "template": (_STR, "base.sh.j2", "a template file name in the template search path"),
    # One mail when a run is over (never one per link): who gets it, and the program that
    # sends it (`mailer -s SUBJECT ADDRESS` with the text on stdin, as mailx and mail do).
    "mail_user": (_OPT_STR, None, "an e-mail address, or null for no mail"),
    "mailer": (_STR, "mail", "a mail command that takes -s SUBJECT ADDRESS and the text on stdin"),
    "chain": (_DICT, {}, "a mapping with max_links, crash_budget, no_progress_links"),
}
CHAIN_DEFAULTS = {"max_links": 50, "crash_budget": 3, "no_progress_links": 3}


def _fail(source, key: str, value, allowed: str) -> UsageError:
    return UsageError(f"{source}: key {key!r} has bad value {value!r}: allowed is {allowed}")


def parse_walltime(value: str, what: str = "walltime") -> int:
    """HH:MM:SS -> seconds (hours may exceed 99, as in qsub -l h_rt)."""
    match = _HMS.match(str(value).strip())
    if not match:
        raise UsageError(f"bad {what} {value!r}: allowed is HH:MM:SS, e.g. 12:00:00")
    hours, minutes, seconds = (int(g) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise UsageError(f"bad {what} {value!r}: it must be longer than 00:00:00")
    return total


def format_walltime(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def schema_of(data: dict, source: str) -> dict[str, tuple]:
    """SCHEMA plus the keys of the profile's scheduler."""
    scheduler = data.get("scheduler")
    if not isinstance(scheduler, str):
        raise _fail(source, "scheduler", scheduler, "one of: " + ", ".join(backends.REGISTRY))
    try:
        backend = backends.get_backend(scheduler)
    except UsageError:
        raise _fail(source, "scheduler", scheduler, "one of: " + ", ".join(backends.REGISTRY)
                    + ", or a module that defines BACKEND") from None
    return {**SCHEMA, **backend.PROFILE_KEYS}


def validate(data, source: str) -> dict:
    """Check a loaded profile mapping against its schema; return it with defaults filled in."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: a profile must be a YAML mapping of keys, got {type(data).__name__}")
    if "scheduler" not in data:
        raise UsageError(f"{source}: missing key 'scheduler': it must be one of: "
                         + ", ".join(backends.REGISTRY))
    schema = schema_of(data, source)
    unknown = sorted(set(data) - set(schema) - {"name", "source"})
    if unknown:
        raise UsageError(f"{source}: unknown key {unknown[0]!r} for scheduler "
                         f"{data['scheduler']!r}: allowed keys are {', '.join(schema)}")
    profile = {}
    for key, (types, default, allowed) in schema.items():
        if key not in data:
            if default is REQUIRED:
                raise UsageError(f"{source}: missing key {key!r}: it must be {allowed}")
            profile[key] = default.copy() if isinstance(default, (list, dict)) else default
            continue
        value = data[key]
        # bool is an int in Python: do not accept `max_gpus: true`.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise _fail(source, key, value, allowed)
        profile[key] = value
    _check_values(profile, source)
    backends.get_backend(profile["scheduler"]).check_profile(
        profile, lambda key, value, allowed: _fail(source, key, value, allowed))
    return profile


def _check_values(p: dict, source: str) -> None:
    if p["max_gpus"] < 1:
        raise _fail(source, "max_gpus", p["max_gpus"], "a positive integer")
    if p["submit_retry_seconds"] < 0:
        raise _fail(source, "submit_retry_seconds", p["submit_retry_seconds"], "0 or more seconds")
    for key in ("walltime_default", "walltime_max", "walltime_max_cpu"):
        if p[key] is None:
            continue
        if isinstance(p[key], int) and not isinstance(p[key], bool) and p[key] > 0:
            p[key] = format_walltime(p[key])
        try:
            parse_walltime(p[key])
        except UsageError:
            raise _fail(source, key, p[key], "HH:MM:SS, e.g. 12:00:00") from None
    if parse_walltime(p["walltime_default"]) > parse_walltime(p["walltime_max"]):
        raise _fail(source, "walltime_default", p["walltime_default"],
                    f"at most walltime_max ({p['walltime_max']})")
    p["handoff_margin"] = _margin_seconds(p["handoff_margin"], source)
    for key in ("modules", "env_setup"):
        if not all(isinstance(item, str) and "\n" not in item for item in p[key]):
            raise _fail(source, key, p[key], "a list of one-line strings")
    for name, value in p["env"].items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(name)) or isinstance(value, (dict, list)):
            raise _fail(source, f"env.{name}", value, "NAME: scalar value, NAME a shell variable name")
    p["env"] = {str(k): str(v) for k, v in p["env"].items()}
    if p["python_module"] is not None and not SAFE_WORD.match(p["python_module"]):
        raise _fail(source, "python_module", p["python_module"], "a module name such as python3/3.10.12")
    unknown = sorted(set(p["chain"]) - set(CHAIN_DEFAULTS))
    if unknown:
        raise UsageError(f"{source}: unknown key 'chain.{unknown[0]}': allowed keys are "
                         f"{', '.join(CHAIN_DEFAULTS)}")
    chain = {**CHAIN_DEFAULTS, **p["chain"]}
    for key, value in chain.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(source, f"chain.{key}", value, "a positive integer")
    p["chain"] = chain


def _margin_seconds(value, source: str) -> int:
    if isinstance(value, bool):
        raise _fail(source, "handoff_margin", value, SCHEMA["handoff_margin"][2])
    if isinstance(value, int):
        if value < 0:
            raise _fail(source, "handoff_margin", value, "zero or more seconds")
        return value
    if re.match(r"^\d+$", value.strip()):
        return int(value)
    try:
        return parse_walltime(value, "handoff_margin")
    except UsageError:
        raise _fail(source, "handoff_margin", value, SCHEMA["handoff_margin"][2]) from None


# ---------------------------------------------------------------- where profiles live
def config_dir() -> Path:
    if os.environ.get("SLMJOBS_CONFIG_DIR"):
        return Path(os.environ["SLMJOBS_CONFIG_DIR"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "slmjobs"


def cache_dir() -> Path:
    """Status rows of settled runs and compiled templates: $SLMJOBS_CACHE_DIR, else the XDG
    cache home's slmjobs/. Only ever a speed-up: anything in it may be deleted."""
    if os.environ.get("SLMJOBS_CACHE_DIR"):
        return Path(os.environ["SLMJOBS_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "slmjobs"


def project_of(flag: str | None, profile: dict) -> str | None:
    """The scheduler project, first found: --project, $SLMJOBS_PROJECT, the user config's
    `project:`, the profile's. (Checked against the profile by the launcher.)"""
    return (flag or os.environ.get("SLMJOBS_PROJECT") or user_config().get("project")
            or profile.get("project"))


def user_config() -> dict:
    """`<config dir>/config.yaml`: optional `cluster:` (default profile) and `project:`."""
    path = config_dir() / "config.yaml"
    if not path.is_file():
        return {}
    data = _load_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {"cluster", "project"}:
        raise UsageError(f"{path}: allowed keys are cluster, project")
    return data


def profile_dirs() -> list[Path]:
    return [config_dir() / "clusters", SHIPPED_DIR]


def default_cluster() -> str:
    return os.environ.get("SLMJOBS_CLUSTER") or user_config().get("cluster") or "local"


def available() -> dict[str, Path]:
    """name -> file for every profile that can be named (user profiles shadow shipped ones)."""
    found: dict[str, Path] = {}
    for directory in reversed(profile_dirs()):
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")):
                found[path.stem] = path
    return dict(sorted(found.items()))


def _is_path(name: str) -> bool:
    return "/" in name or name.endswith((".yaml", ".yml"))


def load(name: str | None = None) -> dict:
    """Resolve a profile name or path, load and validate it. Adds `name` and `source`."""
    name = name or default_cluster()
    if _is_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UsageError(f"cluster profile file {name!r} not found")
        path = path.resolve()
        data, source = _load_yaml(path), str(path)
    else:
        known = available()
        if name not in known:
            raise UsageError(f"unknown cluster {name!r}: allowed are {', '.join(known)} "
                             f"or a path to a profile .yaml (user profiles go in {config_dir() / 'clusters'})")
        path = known[name]
        data, source = _load_yaml(path), str(path)
    profile = validate(data, source)
    profile["name"] = Path(name).stem if _is_path(name) else name
    profile["source"] = source
    return profile


def _load_yaml(path: Path):
    import yaml  # lazy: only commands that read profiles pay for it

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.load(handle, Loader=loader)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None


# ------------------------------------------------------------- values a launch needs
def expand_root(template: str, project: str | None) -> Path:
    """runs_root/data_root: `{project}` and `{user}` placeholders, $VARS and ~, made absolute."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "user"
    text = template.replace("{project}", project or "").replace("{user}", user)
    return Path(os.path.abspath(os.path.expanduser(os.path.expandvars(text))))


def runs_root(profile: dict, project: str | None) -> Path:
    return expand_root(os.environ.get("SLMJOBS_RUNS_ROOT") or profile["runs_root"], project)


def data_root(profile: dict, project: str | None) -> Path | None:
    value = os.environ.get("SLMJOBS_DATA_ROOT") or profile["data_root"]
    return expand_root(value, project) if value else None


def check_walltime(walltime: str, profile: dict, gpus: int) -> str:
    """`walltime` as HH:MM:SS if one job of `gpus` GPUs may ask for it on `profile`, else
    UsageError (over the maximum, or not longer than the hand-off margin)."""
    seconds = parse_walltime(walltime, "--walltime")
    maximum = walltime_max(profile, gpus)
    if seconds > parse_walltime(maximum):
        kind = "a GPU job" if gpus else "a CPU-only job"
        raise UsageError(f"--walltime {walltime} is over the maximum for {kind} on cluster "
                         f"{profile['name']!r}: allowed is up to {maximum}")
    if seconds <= profile["handoff_margin"]:
        raise UsageError(f"--walltime {walltime} is not longer than the hand-off margin of cluster "
                         f"{profile['name']!r} ({profile['handoff_margin']} s): allowed is more than that")
    return format_walltime(seconds)


def walltime_max(profile: dict, gpus: int) -> str:
    """The most one job may ask for: GPU jobs and CPU-only jobs have their own limits (BU SCC:
    48 h on shared GPU nodes, 720 h for CPU jobs)."""
    if gpus == 0 and profile["walltime_max_cpu"] is not None:
        return profile["walltime_max_cpu"]
    return profile["walltime_max"]
