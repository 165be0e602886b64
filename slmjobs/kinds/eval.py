"""The `eval` kind: score a run's checkpoint (or a Hugging Face model directory) on evaluation
tasks, one job on the run's cluster, GPU or CPU (`slmjobs eval`).

Request: the target (a run directory, or `hf_dir`), the tasks (hellaswag: the native scorer;
others: lm-evaluation-harness, the `slmjobs[eval]` extra), and which checkpoint (the newest
intact one, `checkpoint`, or `all_kept`). Checks at launch: the target is there and, for
hellaswag, the fetched items (`slmjobs eval-data fetch hellaswag`; jobs have no network). A link
runs `python -m trainer.evaluate` (`python -m torch.distributed.run` on several GPUs) with the
hub and datasets offline. Its results go to the TARGET run's evals.jsonl, once per (task,
checkpoint): a repeated or killed eval records nothing twice, so the job is simply run again.
It does not chain: exit 0 is finished.

`eval.after=[hellaswag]` at a training launch makes one of these wait for the training run
(`then: submit`, slmjobs/over.py): it starts when that run finishes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from slmjobs import evaldata, evals, rundir
from slmjobs.errors import UsageError
from slmjobs.kinds import Command, Kind
from slmjobs.render import shquote
from slmjobs.table import Column

NATIVE = "hellaswag"


class Eval(Kind):
    name = "eval"
    progress_name = "evaluation"
    chains = False
    gpus_default = 1
    gpus_min = 0  # --gpus 0 (--cpus N): on the CPU
    columns = (Column("TASKS", "tasks", lambda row: ",".join(row.get("tasks") or []) or "-"),
               evals.HELLASWAG_COLUMN)

    # ------------------------------------------------------------ the request
    def spec_fields(self, options: dict, profile: dict) -> dict:
        target, hf_dir = options.get("target"), options.get("hf_dir")
        if (target is None) == (hf_dir is None):
            raise UsageError("give a RUN or --hf-dir DIR (one of them)")
        tasks = [t for t in (options.get("tasks") or [NATIVE]) if t]
        for task in tasks:
            if not evaldata.TASK_WORD.match(task):
                raise UsageError(f"--tasks {task!r}: allowed: hellaswag or lm-eval task names "
                                 f"(letters, digits, _ . -), comma-separated")
        checkpoint, all_kept = options.get("checkpoint"), bool(options.get("all_kept"))
        if checkpoint and all_kept:
            raise UsageError("--checkpoint and --all-kept: give one of them")
        if hf_dir is not None and (checkpoint or all_kept):
            raise UsageError("--checkpoint and --all-kept are for a run; --hf-dir scores the directory's model")
        model = "hf" if hf_dir else (rundir.run_summary(target).get("model") if rundir.is_run_dir(target) else None)
        return {"model": model, "target": str(Path(target).absolute()) if target else None,
                "hf_dir": str(Path(hf_dir).expanduser().absolute()) if hf_dir else None,
                "tasks": tasks, "checkpoint": str(Path(checkpoint).expanduser().absolute()) if checkpoint else None,
                "all_kept": all_kept}

    def check(self, spec: dict, *, dry_run: bool = False) -> None:
        if spec["target"] and not rundir.is_run_dir(spec["target"]):
            raise UsageError(f"{spec['target']}: not a run directory (no {rundir.RUN_FILE}); allowed: a run "
                             f"name or directory")
        if spec["hf_dir"] and not os.path.isfile(os.path.join(spec["hf_dir"], "config.json")):
            raise UsageError(f"--hf-dir {spec['hf_dir']}: no config.json; allowed: a Hugging Face model directory")
        if spec["checkpoint"] and not os.path.isfile(spec["checkpoint"]):
            raise UsageError(f"--checkpoint {spec['checkpoint']}: no such file")
        if NATIVE in spec["tasks"]:
            check_eval_data(spec)

    # ------------------------------------------------------------ what a link runs
    def command(self, spec: dict) -> Command:
        gpus = spec["gpus"]
        prefix = '"$SLMJOBS_PYTHON" -m trainer.evaluate'
        if gpus > 1:
            prefix = (f'"$SLMJOBS_PYTHON" -m torch.distributed.run --standalone '
                      f'--nproc_per_node {shquote(gpus)} -m trainer.evaluate')
        args = [spec["target"]] if spec["target"] else ["--hf-dir", spec["hf_dir"]]
        # auto: the GPU the job was given, the CPU on a machine without one (as training does)
        args += ["--tasks", ",".join(spec["tasks"]), "--device", "auto" if gpus else "cpu"]
        if spec["checkpoint"]:
            args += ["--checkpoint", spec["checkpoint"]]
        if spec["all_kept"]:
            args.append("--all-kept")
        return Command(prefix, args, env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                          "TRANSFORMERS_OFFLINE": "1"}, comment=(
            "Scores go to the target run's evals.jsonl, once per (task, checkpoint): run again after a kill.",
            "No network in the job: the hub and datasets are offline; the items were fetched on a login node."))

    # ------------------------------------------------------------ progress
    def durable_progress(self, run_dir) -> int | None:
        return None  # one job: no chain to guard

    def finished_trace(self, run_dir) -> bool:
        return False  # its exit status says it

    def position(self, progress: dict) -> tuple:
        return None, None

    def status(self, run_dir, progress: dict) -> dict:
        spec = rundir.load_run(run_dir)
        target = spec.get("target")
        return {"tasks": spec.get("tasks"), "hellaswag": evals.latest_hellaswag(target) if target else None}


KIND = Eval()


def check_eval_data(spec: dict) -> None:
    """The fetched HellaSwag items, where the job will look (refused now, not after a queue wait)."""
    root = Path(spec["data_root"]) if spec.get("data_root") else Path(spec["workdir"]) / "data"
    folder = root / evaldata.EVAL_DATA_DIR / NATIVE
    if not (folder / evaldata.MANIFEST).is_file():
        raise UsageError(f"no HellaSwag data in {folder} (no {evaldata.MANIFEST}); run `slmjobs eval-data "
                         f"fetch hellaswag` on a login node first")


def default_name(target: str | None, hf_dir: str | None) -> str:
    base = Path(target or hf_dir).name
    return f"{base}-eval-{time.strftime('%Y%m%d-%H%M%S')}"


def after_tasks(overrides) -> list[str]:
    """The tasks of an `eval.after=[...]` training override (its last one), [] without one."""
    tasks: list[str] = []
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key == "eval.after":
            tasks = [t.strip().strip("'\"") for t in value.strip().strip("[]").split(",") if t.strip()]
    return tasks
