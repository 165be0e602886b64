"""Render the job script of one link from a run's spec (the contents of run.yaml).

Jinja with StrictUndefined: a template that names a value the launcher does not provide fails
loudly instead of rendering an empty string into a shell line. Three filters mark every value:
  shquote    -- any value on a shell line (shlex.quote; safe words stay readable)
  directive  -- a value in a `#$` line: Grid Engine does not unquote, so it must need no quoting;
                anything else is refused (UsageError) rather than written
  trusted    -- the profile author's own shell lines (env_setup, the #! interpreter), verbatim
Templates are looked up in the user's template dir first (`<config dir>/templates`), then the
package's; `builtin/NAME` always names the package's own, so a user template can extend it.
"""

from __future__ import annotations

import os
import re
import shlex
from functools import lru_cache
from pathlib import Path

from slmjobs import kinds, profiles
from slmjobs.backends import get_backend
from slmjobs.errors import UsageError

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


def shquote(value) -> str:
    return shlex.quote(str(value))


def directive(value) -> str:
    text = str(value)
    if not profiles.SAFE_WORD.match(text):
        raise UsageError(f"value {text!r} cannot go into a '#$' job directive: allowed are "
                         "letters, digits and _.,:=+@%/~- (no spaces, quotes or shell characters)")
    return text


def directive_words(value) -> str:
    """An extra directive such as `-l mem_per_core=8G`: each word checked like `directive`."""
    return " ".join(directive(word) for word in str(value).split())


def trusted(value) -> str:
    return str(value)


@lru_cache(maxsize=None)
def _environment(user_dir: str):
    import jinja2  # lazy: `slmjobs --help` does not pay for it

    package = jinja2.FileSystemLoader(str(TEMPLATE_DIR))
    loader = jinja2.ChoiceLoader([
        jinja2.PrefixLoader({"builtin": package}),
        jinja2.FileSystemLoader(user_dir),
        package,
    ])
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             bytecode_cache=_bytecode_cache(jinja2))
    env.filters.update(shquote=shquote, directive=directive, directive_words=directive_words,
                       trusted=trusted)
    return env


def _bytecode_cache(jinja2):
    """Compiled templates cached on disk: compiling base.sh.j2 costs ~0.15 s, loading it ~1 ms.
    Jinja keys the cache on the template source, so an edited template is recompiled."""
    directory = os.path.join(profiles.cache_dir(), "jinja")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None  # read-only home: just compile every time
    return jinja2.FileSystemBytecodeCache(directory)


def link_tag(link: int) -> str:
    return f"{int(link):03d}"


def context(spec: dict, link: int) -> dict:
    """Everything a template may use, computed from run.yaml and the link number."""
    profile = spec["cluster"]
    run_dir = spec["run_dir"]
    python = spec["python"]
    walltime = spec["walltime"]
    if isinstance(walltime, int):  # a hand-edited run.yaml with an unquoted HH:MM:SS (YAML 1.1)
        walltime = profiles.format_walltime(walltime)
    backend = get_backend(profile["scheduler"])
    command = kinds.of(spec).command(spec)
    return {
        "scheduler": profile["scheduler"],
        "header_template": backend.HEADER_TEMPLATE,
        "slots_variable": backend.SLOTS_VARIABLE,
        "job_id_variable": backend.JOB_ID_VARIABLE,
        "shell": profile["shell"],
        "run_name": spec["name"],
        "job_name": kinds.of(spec).job_name(spec),
        "run_dir": run_dir,
        "gpus": spec["gpus"],
        "link": int(link),
        "link_tag": link_tag(link),
        "max_links": spec["chain"]["max_links"],
        "log_path": f"{run_dir}/logs/link-{link_tag(link)}.log",
        "workdir": spec["workdir"],
        "walltime": walltime,
        "walltime_seconds": profiles.parse_walltime(walltime),
        "handoff_margin": profile["handoff_margin"],
        "modules": ([profile["python_module"]] if profile.get("python_module") else [])
        + profile["modules"],
        "env_setup": profile["env_setup"],
        "env": profile["env"],
        "data_root": spec.get("data_root"),
        "python": python,
        "python_bin": spec.get("bin_dir") or os.path.dirname(python),
        "python_command": profile["python"],
        "command": command,
        **backend.header_context(profile, spec),
    }


def render_link(spec: dict, link: int) -> str:
    """The exact text of scripts/link-NNN.sh."""
    import jinja2

    # The user template dir as it was at launch: a successor rendered inside a job must not
    # depend on the job's environment (no SLMJOBS_CONFIG_DIR there).
    user_dir = spec.get("templates_dir") or str(profiles.config_dir() / "templates")
    env = _environment(user_dir)
    name = spec["cluster"]["template"]
    try:
        template = env.get_template(name)
    except jinja2.TemplateNotFound as exc:
        raise UsageError(f"job script template {exc.name!r} not found: looked in "
                         f"{user_dir} and {TEMPLATE_DIR}") from None
    try:
        text = template.render(context(spec, link))
    except jinja2.UndefinedError as exc:
        raise UsageError(f"template {name!r} uses an unknown value: {exc.message}") from None
    return _tidy(text)


def _tidy(text: str) -> str:
    """Collapse runs of blank lines that optional blocks leave behind."""
    return re.sub(r"\n{3,}", "\n\n", text).lstrip("\n")
