"""What the metrics history (metrics.jsonl) costs the worker: tokens/s with and without it.

    .venv/bin/python benchmarks/bench_history.py [--steps 120] [--rounds 3] [--log-every 1]

The real `python -m trainer.train` (the `tiny` preset on the built-in corpus, CPU, as
bench_worker.py runs it), against the same worker whose MetricsHistory callback does nothing
(its `run_event` replaced before training starts). `--rounds` rounds, each in fresh
processes, the order swapped every round (a machine whose load drifts favours neither); the
first `--warmup` steps are not timed. `--log-every 1` (the default) is the worst case: a record
written at every step. Prints tokens/s of each run, medians and the ratio, and -- independent of
the machine's load -- what one record costs the writer (MetricsHistory._append, timed alone)
against the measured time of one step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

from bench_worker import BATCH, worker_tokens_per_sec

WITHOUT_HISTORY = (
    'import runpy, sys; from trainer.history import MetricsHistory; '
    'MetricsHistory.run_event = lambda self, event, state, logger: None; '
    "sys.argv = ['trainer.train', *sys.argv[1:]]; "
    "runpy.run_module('trainer.train', run_name='__main__', alter_sys=True)")


def seconds_per_record(path: Path, records: int = 20000) -> float:
    """The writer alone: one training record (the figures of a console line) appended."""
    from trainer.history import MetricsHistory
    from trainer.progress import Progress

    path.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress(path.with_name('progress.json'), 'bench', 1000, None, None, write=True)
    history = MetricsHistory(path, progress)
    state = SimpleNamespace(timestamp=SimpleNamespace(batch=0, token=0, total_wct=timedelta(seconds=1.5)))
    history.fit_start(state, None)
    figures = {'step': 10, 'tokens': 20480, 'loss': 2.9123456789, 'bits_per_byte': 4.2012345678,
               'lr': 0.000551234, 'tokens_per_sec': 10240.1, 'steps_per_sec': 2.5012}
    started = time.perf_counter()
    for _ in range(records):
        history._append('train', state, figures)
    elapsed = time.perf_counter() - started
    history.close(state, None)
    return elapsed / records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--steps', type=int, default=120)
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--log-every', type=int, default=1)
    p.add_argument('--data', type=Path, default=None, help='a prepared dataset (default: build the builtin one)')
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix='bench-history-') as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            from trainer.prepare import prepare_builtin
            data = prepare_builtin(tmp / 'builtin')
        overrides = ['model=tiny', f'data.path={data}', f'train.max_steps={args.steps}',
                     f'train.log_every={args.log_every}', 'data.num_workers=0']
        results: dict[str, list[float]] = {'with': [], 'without': []}
        for i in range(args.rounds):
            for side in (('with', 'without') if i % 2 == 0 else ('without', 'with')):
                entry = ('-m', 'trainer.train') if side == 'with' else ('-c', WITHOUT_HISTORY)
                results[side].append(worker_tokens_per_sec(tmp / f'{side}{i}', args.warmup, overrides, entry))
            records = len((tmp / f'with{i}' / 'metrics.jsonl').read_text().splitlines())
            assert not (tmp / f'without{i}' / 'metrics.jsonl').exists()
            print(f'round {i + 1}: with history {results["with"][-1]:,.0f} tok/s ({records} records), '
                  f'without {results["without"][-1]:,.0f} tok/s', flush=True)
        with_history = statistics.median(results['with'])
        without = statistics.median(results['without'])
        print(f'tiny on CPU ({os.cpu_count()} cores), {args.steps} steps ({args.warmup} untimed), '
              f'a record every {args.log_every} step(s), {args.rounds} rounds (load {os.getloadavg()[0]:.2f}):')
        print(f'  with metrics.jsonl     {with_history:10,.0f} tokens/s (median)')
        print(f'  without                {without:10,.0f} tokens/s (median)')
        print(f'  with / without         {with_history / without:10.1%}')
        per_record = seconds_per_record(tmp / 'alone' / 'metrics.jsonl')
        per_step = BATCH * 256 / with_history  # tiny: BATCH windows of 256 tokens a step
        print(f'  one record, timed alone {per_record * 1e6:9.1f} us = {per_record / per_step:.4%} of a '
              f'{per_step * 1e3:.0f} ms step')


if __name__ == '__main__':
    main()
