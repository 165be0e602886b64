"""What the worker's per-step divergence check costs (trainer.callbacks.non_finite_flag: one sum
per weight tensor and the loss, reduced to one flag that rides HandOff's existing all-reduce),
beside the training step it guards. Median seconds, side by side, for each model:

    check      non_finite_flag(loss, model) and reading the flag (the device is waited for)
    step       forward + backward + AdamW step of one batch (batch x seq tokens)

    .venv/bin/python benchmarks/bench_finite_check.py [--device cpu|cuda] [--models tiny gpt2]
                                                     [--batch 1] [--seq 256] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def model_of(name: str, seq: int, device: str):
    import yaml

    from trainer.gpt import GPT, GPTConfig
    from trainer.validate import CONF_DIR
    shape = yaml.safe_load((CONF_DIR / 'model' / f'{name}.yaml').read_text())
    shape = shape.get('model', shape)
    config = GPTConfig(vocab_size=50257, block_size=max(seq, 64), n_layer=shape['n_layer'],
                       n_head=shape['n_head'], n_embd=shape['n_embd'], dropout=0.0, bias=True)
    return GPT(config).to(device)


def seconds(fn, device: str, repeat: int) -> float:
    times = []
    for _ in range(repeat + 1):  # the first one warms up
        start = time.perf_counter()
        fn()
        if device == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    from trainer.callbacks import non_finite_flag
    from trainer.gpt import lm_loss

    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--models', nargs='+', default=['tiny', 'gpt2'])
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--seq', type=int, default=256)
    p.add_argument('--repeat', type=int, default=5)
    args = p.parse_args()
    print(f'device {args.device}, batch {args.batch} x {args.seq} tokens, median of {args.repeat}')
    print(f'{"model":<8} {"params":>9} {"check s":>10} {"step s":>10} {"check/step":>11}')
    for name in args.models:
        model = model_of(name, args.seq, args.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(0, 50257, (args.batch, args.seq + 1), device=args.device)
        holder = {}

        def step():
            logits = model(ids[:, :-1])
            loss = lm_loss(logits, ids[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            holder['loss'] = loss.detach()

        step_s = seconds(step, args.device, args.repeat)
        check_s = seconds(lambda: int(non_finite_flag(holder['loss'], model).item()), args.device,
                          args.repeat)
        params = sum(p.numel() for p in model.parameters())
        print(f'{name:<8} {params / 1e6:>8.1f}M {check_s:>10.4f} {step_s:>10.4f} {check_s / step_s:>10.2%}')


if __name__ == '__main__':
    main()
