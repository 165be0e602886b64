"""The `prepare` kind: a data preparation (`python -m trainer.prepare`) as a chain of CPU-only
jobs, so that tokenizing billions of tokens never runs on a login node (BU's reaper kills any
process there after 15 minutes of CPU time).

Request: the arguments of `slmjobs prepare` / `python -m trainer.prepare`, unchanged. Checks at
launch: the worker's own (`python -m trainer.prepare --plan`: numbers, sources, tokenizer, --out,
an unfinished preparation of other arguments), whose answer, what the preparation will produce
(the dataset's path, windows, vocabulary), is recorded in run.yaml as `dataset`: a training run
launched `--after` this one is checked against it. Resources: no GPU, `--cpus N` slots (the
worker uses what the job script exports as SLMJOBS_CPUS). Every link runs the same command: the
worker stops after a piece when the next would cross its deadline (exit 75) and the next link
continues from its journal. Durable progress: the pieces the journal holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from slmjobs import rundir
from slmjobs.errors import UsageError
from slmjobs.kinds import Command, Kind
from slmjobs.table import Column, number, out_of

# Options slmjobs passes the worker itself (each link's heartbeat; the launch-time plan).
RESERVED_OPTIONS = ("--progress-file", "--plan", "--plan-elsewhere")
PLAN_TIMEOUT_SECONDS = 300  # a Hugging Face tokenizer name may be looked up


class Prepare(Kind):
    name = "prepare"
    progress_name = "piece"
    gpus_default = 0  # a CPU-only job: -pe omp N, no GPU request, the CPU walltime limit
    gpus_min = 0
    columns = (Column("DOCS", "documents", out_of("documents", "total_documents")),
               Column("TOKENS", "tokens", number("tokens", ",")),
               Column("TOK/S", "tokens_per_sec", number("tokens_per_sec", ",.0f")))

    # ------------------------------------------------------------ the request
    def spec_fields(self, options: dict, profile: dict) -> dict:
        args = [str(arg) for arg in options["args"]]
        for arg in args:
            if arg.split("=", 1)[0] in RESERVED_OPTIONS:
                raise UsageError(f"prepare option {arg.split('=', 1)[0]} is set by slmjobs in a job: "
                                 "allowed are the other options of `slmjobs prepare --help`")
        if "--source" not in args:
            raise UsageError("prepare --submit needs --source (builtin, a Hugging Face dataset name, "
                             "or text/jsonl/parquet files)")
        return {"prepare_args": args, "dataset": None}

    def check(self, spec: dict, *, dry_run: bool = False) -> None:
        """The worker's plan, recorded as spec["dataset"] (see the module's docstring)."""
        spec["dataset"] = plan(spec, elsewhere=dry_run)

    # ------------------------------------------------------------ what a link runs
    def command(self, spec: dict) -> Command:
        progress = str(Path(spec["run_dir"]) / rundir.PROGRESS_FILE)
        return Command('"$SLMJOBS_PYTHON" -m trainer.prepare',
                       [*spec["prepare_args"], "--progress-file", progress], comment=(
                           "Every link runs the same command: it continues from the journal, stops "
                           "after a piece when the next would cross SLMJOBS_DEADLINE (exit 75),",
                           "and tokenizes with the granted CPUs (SLMJOBS_CPUS)."))

    # ------------------------------------------------------------ progress
    def durable_progress(self, run_dir) -> int | None:
        """Pieces in the journal: the heartbeat is written after each journal line."""
        pieces = rundir.read_progress(run_dir).get("pieces")
        return pieces if isinstance(pieces, int) else None

    def finished_trace(self, run_dir) -> bool:
        """The dataset is at --out, made after this run was launched (a link killed between the
        worker's finish and its hook; not a dataset --force is replacing)."""
        spec = rundir.load_run(run_dir)
        out = (spec.get("dataset") or {}).get("out")
        if not out:
            return False
        try:
            made = json.loads((Path(out) / "dataset.json").read_text()).get("created_at")
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(made, (int, float)) and made >= spec.get("created", 0)

    def position(self, progress: dict) -> tuple:
        return progress.get("documents"), progress.get("total_documents")

    def eta(self, progress: dict, done, total) -> float | None:
        """The worker's own, from the source's fraction done (none for a hub stream), less the
        time since it said so."""
        eta, said_at = progress.get("eta_seconds"), progress.get("updated_at")
        if progress.get("state") != "preparing" or not isinstance(eta, (int, float)) \
                or not isinstance(said_at, (int, float)):
            return None
        return max(eta - (time.time() - said_at), 0.0)

    def status(self, run_dir, progress: dict) -> dict:
        return {key: progress.get(key)
                for key in ("documents", "total_documents", "tokens", "tokens_per_sec")}


KIND = Prepare()


def plan(spec: dict, elsewhere: bool = False) -> dict:
    """`python -m trainer.prepare --plan ARGS` where the job will run it (its working directory
    and data root): UsageError with the worker's own line, else what it will produce. With
    `elsewhere` (a dry run) paths absent here are warnings on stderr, one line each."""
    environ = dict(os.environ)
    if spec.get("data_root"):
        environ["SLMJOBS_DATA_ROOT"] = spec["data_root"]
    argv = [sys.executable, "-m", "trainer.prepare", *spec["prepare_args"], "--plan",
            *(["--plan-elsewhere"] if elsewhere else [])]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=environ,
                              cwd=spec["workdir"], timeout=PLAN_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"could not check the preparation's arguments ({exc}): allowed is a "
                         "Python environment with slmjobs' worker (pip install slmjobs)") from None
    lines = proc.stderr.splitlines()
    said = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    if proc.returncode != 0:
        raise UsageError(said[-1] if said else f"the preparation's check exited {proc.returncode}: "
                         f"{proc.stderr.strip()[-300:]}")
    for line in lines:
        if line.startswith("warning: "):
            print(f"slmjobs: warning: not checked: {line[len('warning: '):]}", file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])
