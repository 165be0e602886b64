"""HellaSwag items per second: the native scorer (python -m trainer.evaluate) vs lm-evaluation-harness
0.4.13 (python -m lm_eval, hf model) on the same model and the same items, CPU, one run each.

    .venv/bin/python benchmarks/bench_eval.py [--preset gpt2] [--items 40] [--threads N] [--scratch DIR]

Builds a run directory the way the worker leaves it (the preset's shape, random weights, a
GPT-2-sized 50257-id tokenizer made offline: tests/trainer/offline_tokenizers.py), synthetic
HellaSwag items (tests/trainer/eval_items.py), and the checkpoint's Hugging Face export for
lm-eval, whose hellaswag task reads the local file (trainer/lmeval.py). Each scorer runs in a
fresh process; the time is the process's wall time (imports and model loading included, as a job
pays them), and lm-eval's own `total_evaluation_time_seconds` is printed beside it. Both must agree
on every decision (checked). No network: HF_HUB_OFFLINE, HF_DATASETS_OFFLINE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests' / 'trainer'))  # eval_items, offline_tokenizers


def build_run(run_dir: Path, preset: str) -> None:
    import yaml

    from eval_items import tiny_run
    from offline_tokenizers import gpt2_sized_tokenizer
    model = yaml.safe_load((REPO / 'trainer' / 'conf' / 'model' / f'{preset}.yaml').read_text())['model']
    shape = {k: model[k] for k in ('block_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias')}
    tiny_run(run_dir, gpt2_sized_tokenizer(), scale=1.0, shape=shape)


def timed(cmd: list[str], env: dict, cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f'{cmd[2]} failed:\n{proc.stderr[-3000:]}')
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--preset', default='gpt2')
    p.add_argument('--items', type=int, default=40)
    p.add_argument('--threads', type=int, default=os.cpu_count())
    p.add_argument('--scratch', default=None)
    args = p.parse_args()

    from eval_items import synthetic_items, write_items
    from trainer.lmeval import LOCAL_HELLASWAG, write_hellaswag_task
    scratch = Path(tempfile.mkdtemp(prefix='bench-eval-', dir=args.scratch))
    try:
        run = scratch / 'run'
        build_run(run, args.preset)
        data = write_items(scratch / 'items.jsonl', synthetic_items(args.items, seed=7))
        tasks = write_hellaswag_task(data, scratch / 'tasks')
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE='1',
                   HF_DATASETS_OFFLINE='1', TRANSFORMERS_OFFLINE='1', HF_HOME=str(scratch / 'hf-home'),
                   TOKENIZERS_PARALLELISM='false')
        subprocess.run([sys.executable, '-m', 'trainer.export', str(run), '--out', str(scratch / 'export')],
                       env=env, check=True, capture_output=True)
        native = timed([sys.executable, '-m', 'trainer.evaluate', str(run), '--data', str(data), '--device', 'cpu',
                        '--log-samples', str(scratch / 'native.jsonl')], env, scratch)
        lm_eval = timed([sys.executable, '-m', 'lm_eval', '--model', 'hf', '--model_args',
                         f'pretrained={scratch / "export"},dtype=float32', '--tasks', LOCAL_HELLASWAG,
                         '--include_path', str(tasks), '--device', 'cpu', '--batch_size', '8',
                         '--log_samples', '--output_path', str(scratch / 'lm-eval')], env, scratch)
        ours = [json.loads(line) for line in (scratch / 'native.jsonl').read_text().splitlines()]
        [samples] = list((scratch / 'lm-eval').rglob('samples_*.jsonl'))
        theirs = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda s: s['doc_id'])
        [results] = list((scratch / 'lm-eval').rglob('results_*.json'))
        lm_eval_inner = float(json.loads(results.read_text()).get('total_evaluation_time_seconds', 'nan'))
        worst = max(abs(a - float(r[0])) for o, t in zip(ours, theirs)
                    for a, r in zip(o['loglikelihoods'], t['filtered_resps']))
        same = all(max(range(4), key=lambda k: o['loglikelihoods'][k]) == max(range(4), key=lambda k: float(t['filtered_resps'][k][0]))
                   for o, t in zip(ours, theirs))
        n = args.items
        print(f'HellaSwag, {n} synthetic items x 4 endings, {args.preset} shape (random weights), CPU, '
              f'{args.threads} threads')
        print(f'{"scorer":<28}{"wall s":>9}{"items/s":>10}')
        print(f'{"native (trainer.evaluate)":<28}{native:>9.1f}{n / native:>10.2f}')
        print(f'{"lm-eval 0.4.13 (hf)":<28}{lm_eval:>9.1f}{n / lm_eval:>10.2f}'
              f'   (lm-eval\'s own evaluation time {lm_eval_inner:.1f} s: {n / lm_eval_inner:.2f} items/s)')
        print(f'speed-up {lm_eval / native:.2f}x; largest log-likelihood difference {worst:.1e} nats; '
              f'same decisions: {same}')
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
    main()
