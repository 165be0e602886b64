"""GPT-2 124M on one GPU: the Composer worker vs a plain PyTorch loop, bf16, with and without
torch.compile. Prints tokens/s and model FLOPs utilisation (MFU) for each of the four runs.

    .venv/bin/python benchmarks/bench_gpu.py [--steps 40] [--batch 16] [--peak-tflops 989]

NOT RUN in the session that wrote it (no GPU was lent); written so a GPU session can run it as is.
Data: the built-in corpus with the byte tokenizer in 1024-token windows (the model keeps GPT-2's
50257-token vocabulary, so the compute per token is GPT-2's). MFU = 6N + 12LHQT FLOPs per token
(PaLM appendix B, trainer.gpt.GPT.flops_per_token) x tokens/s / peak bf16 dense FLOP/s of the card.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_worker import worker_tokens_per_sec  # a script's own folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEAK_BF16_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0, 'L40S': 362.0, 'A6000': 155.0, 'V100': 125.0}


def peak_tflops(override: float | None) -> float:
    import torch
    if override:
        return override
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    sys.exit(f'unknown GPU {name!r}: pass --peak-tflops')


def gpt2():
    import yaml
    from trainer.gpt import GPT, GPTConfig
    model = yaml.safe_load((REPO / 'trainer' / 'conf' / 'model' / 'gpt2.yaml').read_text())['model']
    return GPT(GPTConfig(**{k: v for k, v in model.items() if k != 'name'}))


def plain_loop(data: Path, steps: int, warmup: int, batch: int, compile_model: bool) -> float:
    import torch

    from trainer.data import make_loader
    from trainer.gpt import lm_loss, split_window
    torch.manual_seed(17)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = gpt2().cuda()
    opt = torch.optim.AdamW(model.optimizer_groups(0.1), lr=6e-4, betas=(0.9, 0.95), fused=False)
    fwd = torch.compile(model) if compile_model else model
    _, loader = make_loader(data / 'train', batch, shuffle=True, shuffle_seed=9176,
                            num_canonical_nodes=1, num_workers=4, drop_last=True)
    tokens, started = 0, None
    for step, window in enumerate(loader, start=1):
        inputs, targets = split_window(window.cuda(non_blocking=True))
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = lm_loss(fwd(inputs), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        if step == warmup:
            torch.cuda.synchronize()
            started = time.perf_counter()
        elif step > warmup:
            tokens += inputs.numel()
        if step == steps:
            break
    torch.cuda.synchronize()
    return tokens / (time.perf_counter() - started)


def worker(data: Path, steps: int, warmup: int, batch: int, compile_model: bool, run_dir: Path) -> float:
    return worker_tokens_per_sec(run_dir, warmup, [
        'model=gpt2', f'data.path={data}', f'train.max_steps={steps}',
        f'train.global_batch_size={batch}', f'train.microbatch_size={batch}', 'train.log_every=5',
        'train.eval_batches=1', 'data.num_workers=4', f'train.compile={str(compile_model).lower()}'])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--steps', type=int, default=40)
    p.add_argument('--warmup', type=int, default=15, help='untimed steps (compilation happens here)')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--peak-tflops', type=float, default=None)
    p.add_argument('--data', type=Path, default=None)
    p.add_argument('--plain-only', choices=['eager', 'compiled'], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_only:
        rate = plain_loop(args.data, args.steps, args.warmup, args.batch, args.plain_only == 'compiled')
        print(json.dumps({'tokens_per_sec': rate}))
        return

    import torch
    peak = peak_tflops(args.peak_tflops) * 1e12
    flops_per_token = gpt2().flops_per_token(1024)
    with tempfile.TemporaryDirectory(prefix='bench-gpu-') as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            from trainer.prepare import prepare_builtin
            data = prepare_builtin(tmp / 'builtin1024', seq_len=1024)
        print(f'{torch.cuda.get_device_name()}: gpt2 (124M), bf16, batch {args.batch} x 1024 tokens, '
              f'{args.steps} steps ({args.warmup} untimed), peak {peak / 1e12:.0f} TFLOP/s')
        for mode in ('eager', 'compiled'):
            out = subprocess.run([sys.executable, __file__, '--plain-only', mode, '--data', str(data),
                                  '--steps', str(args.steps), '--warmup', str(args.warmup),
                                  '--batch', str(args.batch)], capture_output=True, text=True, check=True)
            plain = json.loads(out.stdout.strip().splitlines()[-1])['tokens_per_sec']
            composer = worker(data, args.steps, args.warmup, args.batch, mode == 'compiled', tmp / f'run-{mode}')
            for name, rate in (('plain loop', plain), ('Composer worker', composer)):
                print(f'  {mode:8s} {name:16s} {rate:10,.0f} tokens/s  MFU {rate * flops_per_token / peak:6.1%}')
            print(f'  {mode:8s} worker / plain    {composer / plain:10.1%}', flush=True)


if __name__ == '__main__':
    main()
