"""Sample text from a run's checkpoint (in the manner of nanoGPT's sample.py).

    python -m trainer.sample RUN_DIR --prompt "Once upon a time" --max-new-tokens 100 --seed 7

Reads the newest intact checkpoint (or --checkpoint), the model's shape from RUN_DIR/model.json
and the run's own tokenizer (trainer.run_inputs), loads the weights only (memory-mapped; the
optimizer state is never read), and prints the continuation of the prompt on stdout. The same
seed gives the same text. Generation stops at max-new-tokens or at end-of-text.

Exit status: 0, or 2 for bad input (one line on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from trainer.errors import EXIT_BAD_INPUT, BadInput, one_line_parser

DEVICES = ('auto', 'cpu', 'cuda')


def load_gpt(model_cfg: dict, weights: dict):
    """trainer.gpt.GPT holding `weights` (a GPT state dict): built on the meta device and given
    the tensors themselves, so nothing is allocated twice and mmapped weights stay mmapped."""
    import torch

    from trainer.gpt import GPT, GPTConfig
    with torch.device('meta'):
        model = GPT(GPTConfig(**model_cfg))
    model.load_state_dict(weights, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # tied again (assign replaced both)
    return model.eval()


def choose_device(device: str) -> str:
    import torch
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise BadInput('--device cuda: no CUDA device visible; allowed here: cpu, auto')
    return device


def generate(model, ids: list[int], max_new_tokens: int, temperature: float, top_k: Optional[int],
             vocab_size: int, eos_id: int, seed: int, device: str) -> list[int]:
    """New token ids after `ids`. Only the tokenizer's ids can be drawn (the padded rows and any
    ids beyond the tokenizer are masked); temperature 0 is greedy."""
    import torch
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            context = idx[:, -model.config.block_size:]  # the model sees at most block_size tokens
            logits = model(context)[0, -1, :vocab_size].float()
            if temperature == 0:
                token = int(torch.argmax(logits))
            else:
                logits = logits / temperature
                if top_k is not None and top_k < vocab_size:
                    kth = torch.topk(logits, top_k).values[-1]
                    logits = logits.masked_fill(logits < kth, float('-inf'))
                probs = torch.softmax(logits, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            if token == eos_id:
                break
            new.append(token)
            idx = torch.cat([idx, torch.tensor([[token]], device=device)], dim=1)
    return new


def parse_args(argv):
    p = one_line_parser(prog='python -m trainer.sample', description=__doc__.split('\n\n')[0])
    p.add_argument('run_dir', help='the run directory (with checkpoints/)')
    p.add_argument('--prompt', default='', help='text to continue (default: start after end-of-text)')
    p.add_argument('--max-new-tokens', type=int, default=200)
    p.add_argument('--temperature', type=float, default=0.8, help='0 = greedy')
    p.add_argument('--top-k', type=int, default=200, help='draw from the k likeliest tokens only')
    p.add_argument('--seed', type=int, default=1337)
    p.add_argument('--checkpoint', default=None, help='a checkpoint file (default: the newest intact one)')
    p.add_argument('--device', default='auto', help=f'one of: {", ".join(DEVICES)}')
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        raise BadInput(f'--max-new-tokens {args.max_new_tokens}: must be a positive integer')
    if not args.temperature >= 0:
        raise BadInput(f'--temperature {args.temperature}: must be >= 0 (0 = greedy)')
    if args.top_k < 1:
        raise BadInput(f'--top-k {args.top_k}: must be a positive integer')
    if args.device not in DEVICES:
        raise BadInput(f'--device {args.device}: allowed: {", ".join(DEVICES)}')
    return args


def sample(args) -> str:
    from trainer import checkpoints
    from trainer.run_inputs import load_tokenizer, model_config

    run_dir = Path(args.run_dir).expanduser().absolute()
    if not run_dir.is_dir():
        raise BadInput(f'{args.run_dir}: no such run directory')
    path, step, skipped = checkpoints.for_run(run_dir, args.checkpoint)
    tok, info = load_tokenizer(run_dir)
    model_cfg = model_config(run_dir)
    device = choose_device(args.device)
    weights = checkpoints.model_state(checkpoints.load(path))
    checkpoints.refuse_non_finite(path, weights)  # a NaN model samples nothing but an error
    for bad, why in skipped:
        print(f'warning: skipped {bad.name}: {why}', file=sys.stderr)
    print(f'sampling {path.name} (step {step}), seed {args.seed}, on {device}', file=sys.stderr)
    model = load_gpt(model_cfg, weights).to(device)
    ids = tok.encode(args.prompt).ids or [info['eos_id']]
    new = generate(model, ids, args.max_new_tokens, args.temperature, args.top_k,
                   info['vocab_size'], info['eos_id'], args.seed, device)
    return tok.decode(new, skip_special_tokens=False)


def main(argv=None) -> int:
    try:
        text = sample(parse_args(sys.argv[1:] if argv is None else argv))
    except BadInput as e:
        print(f'error: {e}', file=sys.stderr)
        return EXIT_BAD_INPUT
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
