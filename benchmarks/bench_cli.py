"""How fast does the CLI start? Median wall time of

    slmjobs --help
    slmjobs launch gpt2 --gpus 2 --cluster scc --dry-run      (project from env SLMJOBS_PROJECT)

beside `python -c pass` on the same machine (target: under 0.3 s), and proof from
`python -X importtime` that torch, composer and streaming are never imported.

    .venv/bin/python benchmarks/bench_cli.py [--repeat 15]

The Jinja bytecode cache (~/.cache/slmjobs/jinja) is pointed at a fresh temporary dir: the
first dry run compiles the templates (reported as "cold"), the rest load them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORBIDDEN = ("torch", "composer", "streaming")
DRY_RUN = ["launch", "gpt2", "--gpus", "2", "--cluster", "scc", "--dry-run"]


def slmjobs_command() -> list[str]:
    script = Path(sys.executable).parent / "slmjobs"
    return [str(script)] if script.exists() else [sys.executable, "-m", "slmjobs"]


def wall_time(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return elapsed


def median_time(argv: list[str], env: dict, repeat: int) -> tuple[float, float, float]:
    times = [wall_time(argv, env) for _ in range(repeat)]
    return statistics.median(times), min(times), max(times)


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
    env = {**os.environ, "SLMJOBS_PROJECT": "benchproj", "XDG_CACHE_HOME": cache}
    command = slmjobs_command()
    try:
        cold = wall_time(command + DRY_RUN, env)
        rows = [
            ("python -c pass", median_time([sys.executable, "-c", "pass"], env, args.repeat)),
            ("slmjobs --help", median_time(command + ["--help"], env, args.repeat)),
            ("slmjobs " + " ".join(DRY_RUN), median_time(command + DRY_RUN, env, args.repeat)),
        ]
        modules = imported_modules(DRY_RUN, env)
        help_modules = imported_modules(["--help"], env)
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
          f"{args.repeat} runs each, command: {' '.join(command)}")
    print(f"{'command':<62} {'median':>8} {'min':>8} {'max':>8}")
    for name, (median, low, high) in rows:
        print(f"{name:<62} {median:8.3f} {low:8.3f} {high:8.3f}")
    print(f"{'  (first dry run, templates compiled: cold cache)':<62} {cold:8.3f}")
    print("target: < 0.300 s for slmjobs commands:",
          "MET" if all(m < 0.3 for n, (m, _, _) in rows[1:]) else "NOT MET")

    names = {name.split(".")[0] for name, _ in modules + help_modules}
    heavy = sorted(names & set(FORBIDDEN))
    print(f"modules imported by the dry run: {len(modules)}; "
          f"torch/composer/streaming imported: {heavy or 'none'}")
    top = sorted((m for m in modules if "." not in m[0]), key=lambda m: -m[1])[:6]
    print("largest top-level imports (cumulative ms): "
          + ", ".join(f"{name} {us / 1000:.0f}" for name, us in top))
    if heavy:
        sys.exit(f"FAIL: the CLI imported {heavy}")


if __name__ == "__main__":
    main()
