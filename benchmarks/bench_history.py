"""What the metrics history (metrics.jsonl) costs the worker: tokens/s with and without it.

    .venv/bin/python benchmarks/bench_history.py [--steps 120] [--rounds 3] [--log-every 1]

The real `python -m trainer.train` (the `tiny` preset on the built-in corpus, CPU, as
bench_worker.py runs it), against the same worker whose MetricsHistory callback does nothing
(its `run_event` replaced before training starts). Alternating, `--rounds` times, each in a
fresh process; the first `--warmup` steps are not timed. `--log-every 1` (the default) is the
worst case: a record written at every step. Prints tokens/s of each run, medians and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench_worker import worker_tokens_per_sec

WITHOUT_HISTORY = (
    'import runpy, sys; from trainer.history import MetricsHistory; '
    'MetricsHistory.run_event = lambda self, event, state, logger: None; '
    "sys.argv = ['trainer.train', *sys.argv[1:]]; "
    "runpy.run_module('trainer.train', run_name='__main__', alter_sys=True)")


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
            run = tmp / f'with{i}'
            results['with'].append(worker_tokens_per_sec(run, args.warmup, overrides))
            records = len((run / 'metrics.jsonl').read_text().splitlines())
            results['without'].append(worker_tokens_per_sec(
                tmp / f'without{i}', args.warmup, overrides, entry=('-c', WITHOUT_HISTORY)))
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


if __name__ == '__main__':
    main()
