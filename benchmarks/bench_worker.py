"""Composer worker throughput vs a plain PyTorch loop, side by side, on CPU.

    .venv/bin/python benchmarks/bench_worker.py [--steps 60] [--rounds 2]

Same model (the `tiny` preset), same data (the built-in corpus, byte tokenizer, 256-token windows,
read with the same StreamingDataset/StreamingDataLoader), same batch, AdamW, warmup+cosine,
gradient clipping. Each side runs in its own fresh process, alternating, `--rounds` times; the
first `--warmup` steps of every run are not timed. The worker is the real `python -m
trainer.train` (its per-window tokens/s from the log), with training metrics on, checkpoints and
wandb off. Prints tokens/s of each run, the medians, and the ratio (target >= 90%).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCH = 8  # the tiny preset's global batch
LOG_EVERY = 10


def plain_loop(data: Path, steps: int, warmup: int, num_workers: int) -> float:
    """The reference: the same work, written by hand. Returns tokens/s after warmup."""
    import math

    import torch

    from trainer.data import make_loader
    from trainer.gpt import GPT, GPTConfig, lm_loss, split_window
    from trainer.dataset_format import read_dataset_info

    info = read_dataset_info(data)
    torch.manual_seed(17)
    model = GPT(GPTConfig(vocab_size=info['tokenizer']['vocab_size'], block_size=256, n_layer=4,
                          n_head=4, n_embd=128))
    opt = torch.optim.AdamW(model.optimizer_groups(0.0), lr=2e-3, betas=(0.9, 0.95))
    total, warm = 200, 20  # the tiny preset's schedule

    def lr_factor(step):
        if step < warm:
            return step / warm
        progress = (step - warm) / (total - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    _, loader = make_loader(data / 'train', BATCH, shuffle=True, shuffle_seed=9176,
                            num_canonical_nodes=1, num_workers=num_workers, drop_last=True)
    model.train()
    tokens = 0
    started = None
    for step, batch in enumerate(loader, start=1):
        inputs, targets = split_window(batch)
        loss = lm_loss(model(inputs), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        loss.item()  # the worker syncs on the loss too (logging)
        if step == warmup:
            started = time.perf_counter()
        elif step > warmup:
            tokens += inputs.numel()
        if step == steps:
            break
    return tokens / (time.perf_counter() - started)


def worker_tokens_per_sec(run_dir: Path, warmup: int, overrides: list[str],
                          entry: tuple[str, ...] = ('-m', 'trainer.train')) -> float:
    """The real `python -m trainer.train` (or `python ENTRY...`) with checkpoints and wandb off:
    tokens/s after `warmup` steps, from its log lines. bench_gpu.py and bench_history.py use it."""
    cmd = [sys.executable, *entry, 'train.eval_every=0',
           'checkpoint.save_every_batches=0', 'checkpoint.save_every_seconds=0',
           'wandb.enabled=false', f'run_dir={run_dir}', *overrides]
    out = subprocess.run(cmd, cwd=run_dir.parent, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    if out.returncode != 0:
        sys.exit(f'worker failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}')
    # Each log line reports tokens/s over the previous log window; skip the warmup windows.
    rates = [(int(s), float(r.replace(',', ''))) for s, r in
             re.findall(r'step (\d+)/\d+ .*?\| ([\d,]+) tok/s', out.stdout)]
    timed = [r for s, r in rates if s > warmup]
    # Average the windows as time does: total tokens / total seconds.
    return len(timed) / sum(1 / r for r in timed)


def worker(data: Path, steps: int, warmup: int, num_workers: int, run_dir: Path) -> float:
    return worker_tokens_per_sec(run_dir, warmup, [
        'model=tiny', f'data.path={data}', f'train.max_steps={steps}',
        f'train.log_every={LOG_EVERY}', f'data.num_workers={num_workers}'])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--steps', type=int, default=60)
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--num-workers', type=int, default=2)
    p.add_argument('--data', type=Path, default=None, help='a prepared dataset (default: build the builtin one)')
    p.add_argument('--plain-only', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_only:
        print(json.dumps({'tokens_per_sec': plain_loop(args.data, args.steps, args.warmup, args.num_workers)}))
        return

    with tempfile.TemporaryDirectory(prefix='bench-worker-') as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            from trainer.prepare import prepare_builtin
            data = prepare_builtin(tmp / 'builtin')
        results = {'plain': [], 'worker': []}
        for i in range(args.rounds):
            out = subprocess.run([sys.executable, __file__, '--plain-only', '--data', str(data),
                                  '--steps', str(args.steps), '--warmup', str(args.warmup),
                                  '--num-workers', str(args.num_workers)],
                                 capture_output=True, text=True, check=True)
            results['plain'].append(json.loads(out.stdout.strip().splitlines()[-1])['tokens_per_sec'])
            results['worker'].append(worker(data, args.steps, args.warmup, args.num_workers, tmp / f'run{i}'))
            print(f'round {i + 1}: plain loop {results["plain"][-1]:,.0f} tok/s, '
                  f'Composer worker {results["worker"][-1]:,.0f} tok/s', flush=True)
        plain = statistics.median(results['plain'])
        composer = statistics.median(results['worker'])
        print(f'tiny on CPU ({os.cpu_count()} cores), batch {BATCH} x 256 tokens, {args.steps} steps '
              f'({args.warmup} untimed), {args.rounds} rounds:')
        print(f'  plain PyTorch loop  {plain:10,.0f} tokens/s (median)')
        print(f'  Composer worker     {composer:10,.0f} tokens/s (median)')
        print(f'  worker / plain      {composer / plain:10.1%}   (target >= 90%)')


if __name__ == '__main__':
    main()
