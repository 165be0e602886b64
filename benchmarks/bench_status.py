"""`slmjobs status` over 1,000 runs with 10,000 ledger events, on Grid Engine and on SLURM side
by side: wall time and scheduler calls.

    .venv/bin/python benchmarks/bench_status.py [--runs 1000] [--repeat 5] [--schedulers sge,slurm]

For each scheduler, builds synthetic run directories in a temporary runs root: most runs are
finished (two accounted links and a held successor deleted at the finish), ACTIVE_RUNS have a
live link that is a REAL job of that scheduler under a user hold (it takes no slot). Then times
the status path
(`monitor.run_statuses` + `table.format_table`, what the CLI prints) in a fresh Python process, as a
user would pay it: the first call with a cold status cache (run.yaml read through the
run-summary.json digest the launcher writes), then `--repeat` warm ones (settled runs come from
the cache, the active ones are read and asked about), then one more cold call without the
digests (runs launched by an older slmjobs). PATH shims log every scheduler call: exactly ONE
qstat (squeue) per status and no qacct (sacct) once everything is accounted. Needs the test
clusters (scripts/sge-up.sh, scripts/slurm-up.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from slmjobs import rundir

ACTIVE_RUNS = 20
EVENTS_PER_RUN = 10
RUN_YAML = """name: {name}
kind: train
model: gpt2
gpus: 2
walltime: '12:00:00'
overrides: [train.max_duration=4000ba, optim.lr=6.0e-4]
chain: {{max_links: 50, crash_budget: 3, no_progress_links: 3}}
cluster:
  scheduler: {scheduler}
  shell: /bin/bash -l
  project: myproject
  modules: [python3/3.10.12, cuda/12.2, gcc/10.2.0]
  env_setup: ['source ~/venvs/slm/bin/activate', 'export TOKENIZERS_PARALLELISM=false']
  gpu_resource: gpus
  gpu_c: 7.0
  gpu_memory: 48G
  pe: omp
  pe_sizes: [1, 2, 3, 4, 8, 16, 28, 32, 36]
  walltime_default: '12:00:00'
  walltime_max: '48:00:00'
  handoff_margin: 600
  runs_root: /projectnb/myproject/slmjobs/runs
version: 0.1.0
"""


def link_events(link: int, job_id: str, how: str, t: float) -> list[dict]:
    return [
        {"event": "submitted", "link": link, "job_id": job_id, "script": f"scripts/link-{link:03d}.sh",
         "hold_on": None, "time": t},
        {"event": "started", "link": link, "job_id": job_id, "host": "scc-k01", "time": t + 60},
        {"event": "ended", "link": link, "job_id": job_id, "how": how, "exit_status": 75,
         "checkpoint_step": 1000 * link, "time": t + 43000},
        {"event": "accounted", "link": link, "job_id": job_id, "wallclock": 42940.0,
         "exit_status": 0, "failed": False, "reason": "", "gpus": 2, "slots": 8,
         "time": t + 43010},
    ]


def make_runs(root: Path, count: int, live_job_ids: list[str], scheduler: str) -> int:
    t0 = time.time() - 7 * 86400
    events_written = 0
    for i in range(count):
        run_dir = root / f"run{i:04d}"
        (run_dir / "logs").mkdir(parents=True)
        rundir.save_run(run_dir, yaml.safe_load(RUN_YAML.format(name=run_dir.name,
                                                                scheduler=scheduler)))  # + digest
        base = 100000 + 10 * i
        events = link_events(1, str(base), "handed_off", t0) + \
            link_events(2, str(base + 1), "finished" if i >= len(live_job_ids) else "handed_off",
                        t0 + 43100)
        if i < len(live_job_ids):  # active: link 3 is a real held job
            events = [{"event": "resumed", "time": t0 - 1}] + events + [
                {"event": "submitted", "link": 3, "job_id": live_job_ids[i], "hold_on": None,
                 "time": t0 + 86200}]
        else:  # finished: the held successor was deleted at the finish
            events += [{"event": "submitted", "link": 3, "job_id": str(base + 2),
                        "hold_on": str(base + 1), "time": t0 + 43200},
                       {"event": "ended", "link": 3, "job_id": str(base + 2), "how": "cancelled",
                        "exit_status": None, "time": t0 + 86100}]
        assert len(events) == EVENTS_PER_RUN
        (run_dir / "jobs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        events_written += len(events)
        (run_dir / "progress.json").write_text(json.dumps(
            {"run_name": run_dir.name, "state": "training", "link": 3, "step": 2100,
             "max_steps": 4000, "tokens_seen": 2100 * 491520, "loss": 3.21,
             "tokens_per_sec": 102400.0, "steps_per_sec": 0.21, "checkpoint_step": 2000,
             "checkpoint_time": time.time() - 300, "updated_at": time.time()}))
    return events_written


# Per scheduler: its query and accounting commands, and a command line that submits a job under
# a user hold (held, it takes no slot and stays in the queue).
QUERY = {"sge": "qstat", "slurm": "squeue"}
ACCOUNTING = {"sge": "qacct", "slurm": "sacct"}
HELD_JOB = {"sge": ["qsub", "-terse", "-h", "-N", "bench_status", "-o", "/dev/null", "-j", "y",
                    "-b", "y", "true"],
            "slurm": ["sbatch", "--parsable", "--hold", "--job-name=bench_status",
                      "--output=/dev/null", "--wrap", "true"]}
CANCEL = {"sge": "qdel", "slurm": "scancel"}


def shim_dir(root: Path, log: Path, scheduler: str) -> Path:
    bin_dir = root / "shim-bin"
    bin_dir.mkdir()
    for tool in (QUERY[scheduler], ACCOUNTING[scheduler]):
        real = shutil.which(tool)
        if real is None:
            sys.exit(f"{tool} not on PATH: start the test cluster (sudo bash "
                     f"scripts/{scheduler}-up.sh)")
        path = bin_dir / tool
        path.write_text(f'#!/bin/bash\necho "{tool} $*" >> "{log}"\nexec "{real}" "$@"\n')
        path.chmod(0o755)
    return bin_dir


STATUS_PROGRAM = """
import sys, time
t = time.perf_counter()
from pathlib import Path
from slmjobs import monitor, table
runs = sorted(p for p in Path(sys.argv[1]).iterdir() if (p / "run.yaml").exists())
rows = monitor.run_statuses(runs)
text = table.format_table(rows)
print(len(rows), len(text.splitlines()), sum(r["state"] == "held" for r in rows),
      f"{time.perf_counter() - t:.3f}")
"""


def measure(scheduler: str, runs: int, repeat: int) -> dict:
    """The figures of one scheduler (see the module's docstring)."""
    query, accounting = QUERY[scheduler], ACCOUNTING[scheduler]
    root = Path(tempfile.mkdtemp(prefix=f"bench-status-{scheduler}-"))
    live: list[str] = []
    try:
        for _ in range(ACTIVE_RUNS):
            out = subprocess.run(HELD_JOB[scheduler], capture_output=True, text=True,
                                 check=True).stdout.strip()
            live.append(out.split(";")[0])
        runs_root = root / "runs"
        events = make_runs(runs_root, runs, live, scheduler)
        log = root / "calls.log"
        env = {**os.environ, "PATH": f"{shim_dir(root, log, scheduler)}:{os.environ['PATH']}",
               "SLMJOBS_CACHE_DIR": str(root / "cache")}  # the first status is a cold cache
        walls, inner, cpus = [], [], []
        for i in range(repeat + 2):
            if i == repeat + 1:  # once more, cold, as if every run predated run-summary.json
                shutil.rmtree(root / "cache")
                for digest in runs_root.glob(f"*/{rundir.SUMMARY_FILE}"):
                    digest.unlink()
            log.write_text("")
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", STATUS_PROGRAM, str(runs_root)],
                                 env=env, capture_output=True, text=True, check=True).stdout.split()
            walls.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)  # status + its query, CPU s
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            inner.append(float(out[3]))
            calls = log.read_text().splitlines()
            query_calls = [c for c in calls if c.startswith(query)]
            assert len(query_calls) == 1, f"expected ONE {query} call, got {calls}"
            assert not [c for c in calls if c.startswith(accounting)], f"{accounting}: {calls}"
            assert out[:3] == [str(runs), str(runs + 1), str(ACTIVE_RUNS)], out
        cli_walls = []  # the real command, L1's CLI listing the runs root
        cli_env = {**env, "SLMJOBS_RUNS_ROOT": str(runs_root)}
        for _ in range(repeat):
            log.write_text("")
            start = time.perf_counter()
            table = subprocess.run([sys.executable, "-m", "slmjobs", "status"], env=cli_env,
                                   capture_output=True, text=True, check=True).stdout
            cli_walls.append(time.perf_counter() - start)
            calls = log.read_text().splitlines()
            assert [c.split()[0] for c in calls] == [query], f"expected ONE {query}: {calls}"
            assert len(table.splitlines()) == runs + 1
        warm = slice(1, repeat + 1)
        return {"events": events, "wall": statistics.median(walls[warm]),
                "wall_min": min(walls[warm]), "inner": statistics.median(inner[warm]),
                "cpu": statistics.median(cpus[warm]), "first_wall": walls[0],
                "first_cpu": cpus[0], "old_wall": walls[-1], "old_cpu": cpus[-1],
                "cli": statistics.median(cli_walls), "cli_min": min(cli_walls),
                "query_call": query_calls[0]}
    finally:
        if live:
            subprocess.run([CANCEL[scheduler], *live], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--schedulers", default="sge,slurm")
    args = parser.parse_args()
    schedulers = args.schedulers.split(",")
    figures = {s: measure(s, args.runs, args.repeat) for s in schedulers}
    baseline = [_time([sys.executable, "-c", "pass"]) for _ in range(args.repeat)]

    def row(label: str, key: str, unit: str = "s") -> None:
        cells = "".join(f"{figures[s][key]:>12.3f} {unit}" for s in schedulers)
        print(f"{label:<62}{cells}")

    print(f"runs {args.runs}, ledger events {figures[schedulers[0]]['events']}, active runs "
          f"{ACTIVE_RUNS} (real jobs under a user hold), repeat {args.repeat}")
    print(f"{'':<62}" + "".join(f"{s:>14}" for s in schedulers))
    row("status wall time, fresh process, imports included (median)", "wall")
    row("  min", "wall_min")
    row("  of which run_statuses + format_table (median)", "inner")
    row("  CPU time of status + its scheduler query (median)", "cpu")
    row(f"  first status (no status cache, {args.runs:,} run-summary.json)", "first_wall")
    row(f"  cold, no run-summary.json ({args.runs:,} run.yaml parsed)", "old_wall")
    row("`python -m slmjobs status` (the CLI, same runs), median", "cli")
    print(f"python -c pass on this machine: median {statistics.median(baseline):.3f} s")
    for s in schedulers:
        print(f"scheduler calls per status on {s}: 1 ({figures[s]['query_call']}), "
              f"{ACCOUNTING[s]} 0")


def _time(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
