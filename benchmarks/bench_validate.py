"""What asking "can this configuration train?" costs a fresh process (the budget for `slmjobs
launch --dry-run` is 0.5 s). Median wall and CPU time, alternating, of

    python -c pass                                   the interpreter alone
    python -c 'import trainer.validate'              the checks' module alone
    python -c '...validate(compose([...]))'          trainer/conf composed (trainer.compose, no
                                                     hydra) + the checks: what `slmjobs launch` runs
    python -c '...compose_with_hydra...'             the same composed by hydra.compose itself
    python -m trainer.validate ...                   the same through the command line (JSON out)
    python -c '...validate_members(16 members)'      a sweep of 16 members checked in one process

against a dataset description written for the run (dataset.json + index files: all the checks
read), and the modules that `import trainer.validate` loads (python -X importtime): no torch,
numpy, omegaconf or hydra.

    .venv/bin/python benchmarks/bench_validate.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ('torch', 'numpy', 'composer', 'streaming', 'omegaconf', 'hydra')
SWEEP = 16


def write_dataset(path: Path) -> Path:
    for split in ('train', 'val'):
        (path / split).mkdir(parents=True)
        (path / split / 'index.json').write_text('{"shards": []}')
    (path / 'dataset.json').write_text(json.dumps({
        'format': 1, 'tokenizer': {'kind': 'gpt2', 'vocab_size': 50257, 'eos_id': 50256},
        'seq_len': 1024, 'window': 1025, 'bytes_per_token': 4.2,
        'splits': {'train': {'windows': 10_000_000}, 'val': {'windows': 10_000}}}))
    return path


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    cpu0, start = children_cpu(), time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f'{" ".join(argv)} failed: {proc.stderr.strip()}')
    return wall, cpu


def imported(env: dict) -> list[tuple[str, int]]:
    proc = subprocess.run([sys.executable, '-X', 'importtime', '-c', 'import trainer.validate'], env=env,
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    modules = []
    for line in proc.stderr.splitlines():
        if line.startswith('import time:') and '|' in line:
            _, cumulative, name = line[len('import time:'):].split('|')
            if cumulative.strip().isdigit():
                modules.append((name.strip(), int(cumulative)))
    return modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeat', type=int, default=15)
    args = parser.parse_args()
    data = write_dataset(Path(tempfile.mkdtemp(prefix='bench-validate-')) / 'ds')
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    overrides = ['model=gpt2', f'data.path={data}']
    members = [[*overrides, f'train.lr={lr:.1e}'] for lr in (1e-4 * 1.5 ** i for i in range(SWEEP))]
    commands = {
        'python -c pass': [sys.executable, '-c', 'pass'],
        'import trainer.validate': [sys.executable, '-c', 'import trainer.validate'],
        'compose + validate': [sys.executable, '-c', 'from trainer.validate import compose, validate; '
                               f'validate(compose({overrides!r}), world_size=2)'],
        'hydra.compose + validate': [sys.executable, '-c', 'from trainer.validate import validate; '
                                     'from trainer.compose import compose_with_hydra; '
                                     f'validate(compose_with_hydra({overrides!r}), world_size=2)'],
        'python -m trainer.validate': [sys.executable, '-m', 'trainer.validate', '--ranks', '2', *overrides],
        f'{SWEEP} members, one process': [sys.executable, '-c', 'from trainer.validate import validate_members; '
                                         f'validate_members({members!r}, world_size=2)'],
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.repeat):  # alternating, so a change in the machine's load hits all alike
        for name, argv in commands.items():
            runs[name].append(timed(argv, env))

    print(f'load average {os.getloadavg()[0]:.2f}, {args.repeat} runs each, fresh processes')
    base_wall = statistics.median(w for w, _ in runs['python -c pass'])
    base_cpu = statistics.median(c for _, c in runs['python -c pass'])
    for name, samples in runs.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        extra = '' if name == 'python -c pass' else f'   (+{wall - base_wall:.3f} s wall, +{cpu - base_cpu:.3f} s CPU over the interpreter)'
        print(f'  {name:30s} median {wall:.3f} s wall, {cpu:.3f} s CPU{extra}')

    one = statistics.median(c for _, c in runs['compose + validate'])
    many = statistics.median(c for _, c in runs[f'{SWEEP} members, one process'])
    print(f'  a sweep member beyond the first: +{(many - one) / (SWEEP - 1) * 1e3:.1f} ms CPU '
          f'(one process each: {one * 1e3:.0f} ms CPU)')

    modules = imported(env)
    heavy = sorted({name.split('.')[0] for name, _ in modules} & set(HEAVY))
    own = dict(modules).get('trainer.validate')
    print(f'-X importtime of trainer.validate: {len(modules)} modules, trainer.validate cumulative '
          f'{own / 1e3:.1f} ms; heavy packages imported: {heavy or "none"}')


if __name__ == '__main__':
    main()
