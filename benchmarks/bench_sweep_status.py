"""`slmjobs status S` over a 100-member sweep beside `slmjobs status` over 100 plain runs, on the
real Grid Engine: wall time of the real CLI, and scheduler calls.

    .venv/bin/python benchmarks/bench_sweep_status.py [--members 100] [--max-running 10] [--repeat 5]

Every member (and every plain run) has one live link: a REAL job under a user hold (it takes no
slot). The sweep's first K members were released (a `released` event: they hold a slot), the rest
wait for one, so status runs the throttle's check for the sweep and releases nobody. PATH shims
log every scheduler call: ONE qstat per status either way, and nothing else (no qrls, no qacct).
Needs the test cluster (scripts/sge-up.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench_status import CANCEL, HELD_JOB, RUN_YAML
from slmjobs import rundir, sweep

TOOLS = ("qstat", "qacct", "qrls", "qalter")


def make_runs(runs_root: Path, job_ids: list[str], sweep_dir: Path | None, k: int) -> None:
    """One run per job id; as sweep members (the first k released) when `sweep_dir` is given."""
    t0 = time.time() - 3600
    members = []
    for i, job_id in enumerate(job_ids):
        name = f"sw-seed{i}" if sweep_dir else f"run{i:03d}"
        run_dir = runs_root / name
        (run_dir / "logs").mkdir(parents=True)
        spec = yaml.safe_load(RUN_YAML.format(name=name, scheduler="sge"))
        spec["run_dir"] = str(run_dir)
        held = sweep_dir is not None and i >= k
        if sweep_dir:
            spec["sweep"] = str(sweep_dir)
            spec["then"] = [{"release": str(sweep_dir)}]
            members.append({"name": name, "overrides": [f"seed={i}"], "run_dir": str(run_dir)})
        rundir.save_run(run_dir, spec)
        events = [{"event": "submitted", "link": 1, "job_id": job_id, "script": "scripts/link-001.sh",
                   "hold_on": None, **({"held": True} if sweep_dir else {}), "time": t0}]
        if sweep_dir and not held:
            events.append({"event": "released", "link": 1, "job_id": job_id, "by": "sweep",
                           "after": None, "time": t0 + 1})
        (run_dir / "jobs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if sweep_dir:
        sweep_dir.mkdir(parents=True)
        sweep.save(sweep_dir, {"name": "sw", "model": "gpt2", "grammar": [["seed=range(100)"]],
                               "common": [], "max_running": k, "request": {},
                               "members": members, "created": t0})


def shims(root: Path, log: Path) -> Path:
    bin_dir = root / "shim-bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        path = bin_dir / tool
        path.write_text(f'#!/bin/bash\necho "{tool} $*" >> "{log}"\nexec "{shutil.which(tool)}" "$@"\n')
        path.chmod(0o755)
    return bin_dir


def time_status(env: dict, args: list[str], log: Path, repeat: int) -> tuple[list[float], list[str]]:
    walls, calls = [], []
    for _ in range(repeat):
        log.write_text("")
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "slmjobs", "status", *args], env=env,
                             capture_output=True, text=True, check=True).stdout
        walls.append(time.perf_counter() - start)
        calls = [line.split()[0] for line in log.read_text().splitlines()]
        assert calls == ["qstat"], f"expected ONE qstat, got {calls}"
    return walls, out.splitlines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--max-running", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-status-"))
    live: list[str] = []
    try:
        for _ in range(args.members):
            live.append(subprocess.run(HELD_JOB["sge"], capture_output=True, text=True,
                                       check=True).stdout.strip())
        log = root / "calls.log"
        env = {**os.environ, "PATH": f"{shims(root, log)}:{os.environ['PATH']}"}
        sweep_root, plain_root = root / "sweep-runs", root / "plain-runs"
        make_runs(sweep_root, live, sweep.sweep_dir(sweep_root, "sw"), args.max_running)
        make_runs(plain_root, live, None, args.max_running)
        figures = {}
        for label, runs_root, status_args in (("sweep", sweep_root, ["sw"]),
                                              ("plain", plain_root, [])):
            walls, lines = time_status({**env, "SLMJOBS_RUNS_ROOT": str(runs_root),
                                        "SLMJOBS_CACHE_DIR": str(root / f"cache-{label}")},
                                       status_args, log, args.repeat)
            figures[label] = (statistics.median(walls), min(walls), lines)
        summary = figures["sweep"][2][-1]
        assert summary.startswith(f"sweep sw: {args.members} members: {args.max_running} running, "
                                  f"{args.members - args.max_running} waiting"), summary
        assert len(figures["plain"][2]) == args.members + 1
        print(f"{args.members} runs, each with one live job (a real Grid Engine job under a user "
              f"hold); sweep K = {args.max_running}; repeat {args.repeat}")
        print(f"{'':<44}{'median':>10}{'min':>10}  scheduler calls")
        print(f"{'slmjobs status sw (' + str(args.members) + '-member sweep)':<44}"
              f"{figures['sweep'][0]:>9.3f}s{figures['sweep'][1]:>9.3f}s  1 qstat")
        print(f"{'slmjobs status (' + str(args.members) + ' plain runs)':<44}"
              f"{figures['plain'][0]:>9.3f}s{figures['plain'][1]:>9.3f}s  1 qstat")
        print(f"summary line: {summary}")
    finally:
        if live:
            subprocess.run([CANCEL["sge"], *live], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
