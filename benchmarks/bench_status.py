"""`slmjobs status` over 1,000 runs with 10,000 ledger events: wall time and scheduler calls.

    .venv/bin/python benchmarks/bench_status.py [--runs 1000] [--repeat 5]

Builds synthetic run directories in a temporary runs root: most runs are finished (two
accounted links and a held successor deleted at the finish), ACTIVE_RUNS have a live link that
is a REAL Grid Engine job under a user hold (hqw: it takes no slot). Then times the status path
(`monitor.run_statuses` + `table.format_table`, what the CLI prints) in a fresh Python process, as a
user would pay it: the first call with a cold status cache (run.yaml read through the
run-summary.json digest the launcher writes), then `--repeat` warm ones (settled runs come from
the cache, the active ones are read and asked about), then one more cold call without the
digests (runs launched by an older slmjobs). PATH shims log every qstat/qacct call: exactly ONE
qstat per status and no qacct once everything is accounted. Needs the test cluster (scripts/sge-up.sh).
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
  scheduler: sge
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


def make_runs(root: Path, count: int, live_job_ids: list[str]) -> int:
    t0 = time.time() - 7 * 86400
    events_written = 0
    for i in range(count):
        run_dir = root / f"run{i:04d}"
        (run_dir / "logs").mkdir(parents=True)
        rundir.save_run(run_dir, yaml.safe_load(RUN_YAML.format(name=run_dir.name)))  # + digest
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


def shim_dir(root: Path, log: Path) -> Path:
    bin_dir = root / "shim-bin"
    bin_dir.mkdir()
    for tool in ("qstat", "qacct"):
        real = shutil.which(tool)
        if real is None:
            sys.exit(f"{tool} not on PATH: start the test cluster (sudo bash scripts/sge-up.sh)")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-status-"))
    live: list[str] = []
    try:
        for _ in range(ACTIVE_RUNS):  # real jobs under a user hold: hqw, no slot used
            live.append(subprocess.run(
                ["qsub", "-terse", "-h", "-N", "bench_status", "-o", "/dev/null", "-j", "y",
                 "-b", "y", "true"], capture_output=True, text=True, check=True).stdout.strip())
        runs_root = root / "runs"
        events = make_runs(runs_root, args.runs, live)
        log = root / "calls.log"
        env = {**os.environ, "PATH": f"{shim_dir(root, log)}:{os.environ['PATH']}",
               "SLMJOBS_CACHE_DIR": str(root / "cache")}  # the first status is a cold cache
        walls, inner, cpus = [], [], []
        for i in range(args.repeat + 2):
            if i == args.repeat + 1:  # once more, cold, as if every run predated run-summary.json
                shutil.rmtree(root / "cache")
                for digest in runs_root.glob(f"*/{rundir.SUMMARY_FILE}"):
                    digest.unlink()
            log.write_text("")
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", STATUS_PROGRAM, str(runs_root)],
                                 env=env, capture_output=True, text=True, check=True).stdout.split()
            walls.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)  # status + qstat, CPU seconds
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            inner.append(float(out[3]))
            calls = log.read_text().splitlines()
            qstat_calls = [c for c in calls if c.startswith("qstat")]
            assert len(qstat_calls) == 1, f"expected ONE qstat call, got {calls}"
            assert not [c for c in calls if c.startswith("qacct")], f"qacct asked: {calls}"
            assert out[:3] == [str(args.runs), str(args.runs + 1), str(ACTIVE_RUNS)], out
        cli_walls = []  # the real command, L1's CLI listing the runs root
        cli_env = {**env, "SLMJOBS_RUNS_ROOT": str(runs_root)}
        for _ in range(args.repeat):
            log.write_text("")
            start = time.perf_counter()
            table = subprocess.run([sys.executable, "-m", "slmjobs", "status"], env=cli_env,
                                   capture_output=True, text=True, check=True).stdout
            cli_walls.append(time.perf_counter() - start)
            calls = log.read_text().splitlines()
            assert [c.split()[0] for c in calls] == ["qstat"], f"expected ONE qstat: {calls}"
            assert len(table.splitlines()) == args.runs + 1
        baseline = [_time([sys.executable, "-c", "pass"]) for _ in range(args.repeat)]
        print(f"runs {args.runs}, ledger events {events}, active runs {ACTIVE_RUNS} "
              f"(real hqw jobs), repeat {args.repeat}")
        warm = slice(1, args.repeat + 1)
        print(f"status wall time (fresh process, imports included): median "
              f"{statistics.median(walls[warm]):.3f} s, min {min(walls[warm]):.3f} s  (target < 1 s)")
        print(f"  of which run_statuses + format_table: median "
              f"{statistics.median(inner[warm]):.3f} s")
        print(f"  CPU time of status + its qstat: median {statistics.median(cpus[warm]):.3f} s "
              "(less sensitive to other load on the machine than wall time)")
        print(f"  first status (no status cache: every ledger read, {args.runs:,} run-summary.json): "
              f"{walls[0]:.3f} s wall, {cpus[0]:.3f} s CPU")
        print(f"  cold and without run-summary.json (runs of an older slmjobs: {args.runs:,} "
              f"run.yaml parsed, digests rewritten): {walls[-1]:.3f} s wall, {cpus[-1]:.3f} s CPU")
        print(f"`python -m slmjobs status` (the CLI, same runs): median "
              f"{statistics.median(cli_walls):.3f} s, min {min(cli_walls):.3f} s, one qstat each")
        print(f"  python -c pass on this machine: median {statistics.median(baseline):.3f} s")
        print(f"scheduler calls per status: qstat 1 ({qstat_calls[0]}), qacct 0")
    finally:
        if live:
            subprocess.run(["qdel", *live], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _time(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
