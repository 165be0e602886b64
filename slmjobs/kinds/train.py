"""The `train` kind: GPT training with our Composer worker (trainer/), the first kind of run.

Request: a model preset (trainer/conf/model) and hydra overrides. Checks at launch: the
worker's own configuration checks (trainer.validate, no torch) and wandb's credentials. A link
runs `python -m trainer.train` (`composer -n N -m trainer.train` on several GPUs). Durable
progress: the step of the checkpoint the next link resumes from; before a link starts, damaged
checkpoints are set aside (slmjobs.checkpoints).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from slmjobs import checkpoints, evals, events, rundir
from slmjobs.errors import UsageError
from slmjobs.kinds import Command, Kind
from slmjobs.render import shquote
from slmjobs.table import Column, number, out_of

RESERVED_OVERRIDES = ("model", "run_name", "run_dir")
# Hydra override grammar, the part that matters here: an optional ~ / + / ++ prefix, a dotted
# key (config groups may use / and @), then =value (anything on one line; hydra parses it).
OVERRIDE = re.compile(r"^(~|\+\+?)?[A-Za-z_][A-Za-z0-9_.\-/@]*(=.*)?$", re.DOTALL)
PREFLIGHT = """if [ -z "$SLMJOBS_PYTHON" ] || ! command -v composer >/dev/null; then
    echo "slmjobs: python (${SLMJOBS_PYTHON:-not found}) or composer not found on PATH=$PATH" >&2
fi"""
# Composer's checkpoint names carry the batch: ep0-ba120-rank0.pt
_BATCH_IN_NAME = re.compile(r"-ba(\d+)-")


class Train(Kind):
    name = "train"
    progress_name = "step"
    gpus_min = 1  # one rank per GPU (on a CPU-only machine, 1 = one process on the CPU)
    columns = (Column("STEP", "step", out_of("step", "max_steps")),
               Column("LOSS", "loss", number("loss", ".3f")),
               Column("TOK/S", "tokens_per_sec", number("tokens_per_sec", ",.0f")),
               evals.HELLASWAG_COLUMN)

    # ------------------------------------------------------------ the request
    def spec_fields(self, options: dict, profile: dict) -> dict:
        model, overrides = options["model"], list(options.get("overrides", ()))
        check_model(model)
        for override in overrides:
            check_override(override)
        return {"model": model, "overrides": overrides}

    def check(self, spec: dict, *, dry_run: bool = False) -> None:
        check_training_config(spec)

    # ------------------------------------------------------------ what a link runs
    def command(self, spec: dict) -> Command:
        # One GPU needs no launcher: composer's own imports cost ~8 CPU-seconds of every start.
        gpus = spec["gpus"]
        prefix = (f"composer -n {shquote(gpus)} -m trainer.train" if gpus > 1
                  else '"$SLMJOBS_PYTHON" -m trainer.train')
        return Command(prefix, worker_args(spec), requires="composer", preflight=PREFLIGHT, comment=(
            "The worker runs in the background and the script waits for it, so this shell stays responsive.",
            "One GPU needs no launcher (composer's own imports cost ~8 CPU-seconds of every link's start)."))

    # ------------------------------------------------------------ progress
    def durable_progress(self, run_dir) -> int | None:
        """The step of the checkpoint `latest-rank0.pt` points at (what the next link resumes
        from, after any damaged one was set aside), else progress.json's checkpoint step."""
        match = _BATCH_IN_NAME.search(rundir.latest_checkpoint_name(run_dir) or "")
        if match:
            return int(match.group(1))
        step = rundir.read_progress(run_dir).get("checkpoint_step")
        return step if isinstance(step, int) else None

    def finished_trace(self, run_dir) -> bool:
        progress = rundir.read_progress(run_dir)
        return progress.get("state") == "finished" and progress.get("checkpoint_step") is not None \
            and progress.get("checkpoint_step") == progress.get("max_steps")

    def before_link(self, run_dir, link: int):
        """Set damaged checkpoints aside so the worker resumes from the newest intact one; stop
        when none is left (a loop of crashes on it would teach nothing)."""
        check = checkpoints.ensure_intact_latest(run_dir)
        found = [events.checkpoint_set_aside(link, path, step, why, check.latest_step)
                 for path, step, why in check.set_aside]
        if check.none_intact:
            return found, (events.NO_INTACT_CHECKPOINT, (
                "no intact checkpoint is left to resume from (damaged ones are set aside as "
                f"*{checkpoints.DAMAGED_SUFFIX} in {rundir.checkpoints_dir(run_dir)}); remove "
                "latest-rank0.pt to start the training over"))
        return found, None

    def recheck(self, spec: dict, run_dir, stop_reason: str | None) -> None:
        if stop_reason == events.BAD_CONFIG:
            self.check(spec)
        if stop_reason == events.NO_INTACT_CHECKPOINT and checkpoints.none_intact(run_dir):
            raise UsageError(f"cannot resume run {spec['name']}: still no intact checkpoint in "
                             f"{rundir.checkpoints_dir(run_dir)}; allowed: remove latest-rank0.pt "
                             "to start the training over")

    def status(self, run_dir, progress: dict) -> dict:
        return {"loss": progress.get("loss"), "tokens_per_sec": progress.get("tokens_per_sec"),
                "hellaswag": evals.latest_hellaswag(run_dir)}


KIND = Train()


def worker_args(spec: dict) -> list[str]:
    """The hydra overrides every link passes the worker (docs/CONTRACTS.md)."""
    return [f"model={spec['model']}", f"run_name={spec['name']}", f"run_dir={spec['run_dir']}",
            *spec["overrides"]]


# ----------------------------------------------------------------------- the request
def models_dir() -> Path:
    """trainer/conf/model, found without importing the trainer (it would pull in torch)."""
    spec = importlib.util.find_spec("trainer")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]) / "conf" / "model"
    return Path(__file__).resolve().parents[2] / "trainer" / "conf" / "model"


def available_models() -> list[str]:
    directory = models_dir()
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def check_model(model: str) -> None:
    known = available_models()
    if model not in known:
        raise UsageError(f"unknown model {model!r}: allowed are {', '.join(known) or '(none found in ' + str(models_dir()) + ')'}")


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


# ------------------------------------------------------------- can it ever train?
def check_training_config(spec: dict, environ=None) -> dict:
    """The worker's own checks on the composed configuration (trainer.validate: no torch, no
    hydra for what the launcher passes), run here and now as the job would run them: the data
    root the job gets, relative paths from its working directory. A typo, a missing dataset or
    a batch the ranks cannot split is refused before anything is submitted, not after a queue
    wait. Returns the composed configuration."""
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
