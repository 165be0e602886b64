"""How fast does the CLI start? Median wall time of

    slmjobs --help
    slmjobs launch gpt2 --gpus 2 --cluster scc --dry-run      (project from env SLMJOBS_PROJECT)

beside `python -c pass` on the same machine (targets, on an idle machine: --help under 0.3 s; the
dry run, which runs the worker's own configuration checks in-process, under 0.3 s), and proof
from `python -X importtime` that torch, composer, streaming, lightning, submitit and lm_eval are
never imported, nor hydra by the dry run (trainer.compose composes without it).
The dry run checks a real dataset: a small one is prepared first in a temporary data root.

    .venv/bin/python benchmarks/bench_cli.py [--repeat 15]

The Jinja bytecode cache ($SLMJOBS_CACHE_DIR/jinja, default ~/.cache/slmjobs/jinja) is pointed
at a fresh temporary dir: the first dry run compiles the templates (reported as "cold"), the rest load them.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORBIDDEN = ("torch", "composer", "streaming", "lightning", "submitit", "lm_eval")
DRY_RUN = ["launch", "gpt2", "--gpus", "2", "--cluster", "scc", "--dry-run"]


def slmjobs_command() -> list[str]:
    script = Path(sys.executable).parent / "slmjobs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "slmjobs"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run. CPU time barely moves when other work loads the
    machine, so it shows the command's own cost even when wall time is inflated."""
    cpu0, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed, cpu = time.perf_counter() - start, _children_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return elapsed, cpu


def median_time(argv: list[str], env: dict, repeat: int) -> tuple[float, float, float, float]:
    runs = [timed_run(argv, env) for _ in range(repeat)]
    walls = [wall for wall, _ in runs]
    return (statistics.median(walls), min(walls), max(walls),
            statistics.median(cpu for _, cpu in runs))


def imported_modules(argv: list[str], env: dict) -> list[tuple[str, int]]:
    """(module, cumulative microseconds) from python -X importtime."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "slmjobs", *argv], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    modules = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            if cumulative.strip().isdigit():
                modules.append((name.strip(), int(cumulative)))
    return modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    cache = tempfile.mkdtemp(prefix="slmjobs-bench-cache-")
    data_root = Path(cache) / "data"
    subprocess.run([sys.executable, "-m", "trainer.prepare", "--source", "builtin",
                    "--max-documents", "60", "--out", str(data_root / "builtin")], check=True,
                   capture_output=True)
    env = {**os.environ, "SLMJOBS_PROJECT": "benchproj", "SLMJOBS_CACHE_DIR": cache,
           "SLMJOBS_DATA_ROOT": str(data_root)}
    command = slmjobs_command()
    try:
        cold, _ = timed_run(command + DRY_RUN, env)
        rows = [
            ("python -c pass", median_time([sys.executable, "-c", "pass"], env, args.repeat)),
            ("slmjobs --help", median_time(command + ["--help"], env, args.repeat)),
            ("slmjobs " + " ".join(DRY_RUN), median_time(command + DRY_RUN, env, args.repeat)),
        ]
        modules = imported_modules(DRY_RUN, env)
        help_modules = imported_modules(["--help"], env)
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, python "
          f"{sys.version.split()[0]}, {args.repeat} runs each, command: {' '.join(command)}")
    print(f"{'seconds':<58} {'median':>7} {'min':>7} {'max':>7} {'cpu':>7}")
    for name, (median, low, high, cpu) in rows:
        print(f"{name:<58} {median:7.3f} {low:7.3f} {high:7.3f} {cpu:7.3f}")
    print(f"{'  (first dry run, templates compiled: cold cache)':<58} {cold:7.3f}")
    print("targets: median wall --help < 0.300 s, dry run < 0.300 s:",
          "MET" if rows[1][1][0] < 0.3 and rows[2][1][0] < 0.3 else "NOT MET")

    names = {name.split(".")[0] for name, _ in modules + help_modules}
    heavy = sorted(names & set(FORBIDDEN)) + (["hydra"] if "hydra" in names else [])
    print(f"modules imported by the dry run: {len(modules)}; "
          f"{'/'.join(FORBIDDEN)}/hydra imported: {heavy or 'none'}")
    top = sorted((m for m in modules if "." not in m[0]), key=lambda m: -m[1])[:6]
    print("largest top-level imports (cumulative ms): "
          + ", ".join(f"{name} {us / 1000:.0f}" for name, us in top))
    if heavy:
        sys.exit(f"FAIL: the CLI imported {heavy}")


if __name__ == "__main__":
    main()
