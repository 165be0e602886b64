"""What the `command` kind's wrapper adds to every link of `slmjobs run` (its start, the guard,
the exit), and what `import slmjobs.link` costs a user's script. Median wall time, alternating:

    true                                             the command alone
    python -m slmjobs.wrapper RUN_DIR -- true        the same under the wrapper
    python -c pass                                   the interpreter alone
    python -c 'import slmjobs.link'                  the contract's module

    .venv/bin/python benchmarks/bench_wrapper.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "true": ["true"],
    "wrapper -- true": [sys.executable, "-m", "slmjobs.wrapper", "{run_dir}", "--", "true"],
    "python -c pass": [sys.executable, "-c", "pass"],
    "import slmjobs.link": [sys.executable, "-c", "import slmjobs.link"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory() as run_dir:
        for _ in range(args.repeat):
            for name, argv in CASES.items():
                started = time.perf_counter()
                subprocess.run([a.format(run_dir=run_dir) for a in argv], check=True,
                               stdout=subprocess.DEVNULL)
                times[name].append(time.perf_counter() - started)
    for name, seconds in times.items():
        print(f"{name:<22} median {statistics.median(seconds) * 1000:7.1f} ms   "
              f"min {min(seconds) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
