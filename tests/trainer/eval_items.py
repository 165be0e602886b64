"""HellaSwag-format items and tiny run directories the evaluation tests make offline.

The items copy the real file's shape (activity_label, ctx_a, ctx_b, ctx, endings, label as an int
or, like the hub, a string) and its WikiHow artifacts (" [title]", "[header]", "[substeps]",
double spaces), with contexts long enough to be left-truncated by a small block_size.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

WORDS = ('the man woman dog ball water rope kitchen then slowly quickly picks puts runs jumps into '
         'over under a an his her knife bowl paint wall river bike helmet stairs laughs waves').split()


def sentence(rng: random.Random, n: int) -> str:
    return ' '.join(rng.choice(WORDS) for _ in range(n))


def synthetic_items(n: int, seed: int = 0, string_labels: bool = False) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        wikihow = i % 3 == 1
        label = rng.randrange(4)
        ctx_a = sentence(rng, rng.randint(3, 40))
        ctx_b = sentence(rng, rng.randint(0, 6))
        if wikihow:
            ctx_a = f'[header] How to {sentence(rng, 3)} [title] {ctx_a.capitalize()}.  [step] {sentence(rng, 4)}'
        endings = [sentence(rng, rng.randint(1, 8)) + '.' for _ in range(4)]
        if wikihow:
            endings[0] = f'[substeps] If {endings[0]}'
            endings[1] = f'{endings[1]} [title] {sentence(rng, 2)}'
        items.append({'ind': i, 'activity_label': 'Cutting the grass' if i % 2 else 'Personal Care and Style',
                      'ctx_a': ctx_a, 'ctx_b': ctx_b, 'ctx': f'{ctx_a} {ctx_b}'.strip(), 'endings': endings,
                      'label': str(label) if string_labels else label, 'split': 'val',
                      'split_type': 'indomain', 'source_id': f'synthetic~{i}'})
    return items


def write_items(path: Path, items: list[dict]) -> Path:
    path.write_text(''.join(json.dumps(item) + '\n' for item in items))
    return path


def small_bpe(items: list[dict], vocab_size: int = 400):
    """A byte-level BPE trained on the items' own text (offline, deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<|endoftext|>'], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = [item['ctx'] + ' ' + ' '.join(item['endings']) for item in items]
    tok.train_from_iterator(text, trainer=trainer)
    return tok


def tiny_run(run_dir: Path, tokenizer=None, block_size: int = 64, seed: int = 0, scale: float = 20.0,
             step: int = 8, weights=None, shape: dict | None = None) -> Path:
    """A run directory as the worker leaves it (model.json, tokenizer/, a checkpoint in Composer's
    layout) holding a 2-layer GPT (or `shape`: GPTConfig's fields but vocab_size). Random weights are scaled up (`scale`) so the model has
    opinions: the endings' log-likelihoods differ by nats, not by rounding. `tokenizer`: a
    tokenizers.Tokenizer, or None for the bytes kind."""
    import torch

    from trainer.gpt import GPT, GPTConfig
    vocab = 257 if tokenizer is None else tokenizer.get_vocab_size()
    shape = shape or {'block_size': block_size, 'n_layer': 2, 'n_head': 2, 'n_embd': 32, 'dropout': 0.0, 'bias': True}
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, **shape))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.mul_(scale)
    state = weights(model) if weights else model.state_dict()
    (run_dir / 'checkpoints').mkdir(parents=True, exist_ok=True)
    (run_dir / 'tokenizer').mkdir(exist_ok=True)
    name = f'ep0-ba{step}-rank0.pt'
    torch.save({'state': {'model': {f'model.{k}': v for k, v in state.items()},
                          'timestamp': {'Timestamp': {'batch': step}}}, 'rng': []},
               run_dir / 'checkpoints' / name)
    latest = run_dir / 'checkpoints' / 'latest-rank0.pt'
    if latest.is_symlink():
        latest.unlink()
    os.symlink(name, latest)
    kind = {'kind': 'bytes', 'vocab_size': 257, 'eos_id': 256}
    if tokenizer is not None:
        tokenizer.save(str(run_dir / 'tokenizer' / 'tokenizer.json'))
        kind = {'kind': 'hf', 'vocab_size': vocab, 'eos_id': tokenizer.token_to_id('<|endoftext|>')}
    (run_dir / 'tokenizer' / 'dataset.json').write_text(json.dumps({'tokenizer': kind}))
    (run_dir / 'model.json').write_text(json.dumps({'preset': 'tiny', 'vocab_size': vocab, **shape}))
    return run_dir


def unigram_weights(favoured: int):
    """A GPT that predicts token `favoured` next whatever the context: the blocks write nothing
    into the residual stream and the final LayerNorm outputs its bias, which is that token's
    embedding (tied head), so every position's logits are the same."""
    def rewrite(model):
        import torch
        with torch.no_grad():
            for block in model.transformer.h:
                for proj in (block.attn.c_proj, block.mlp.c_proj):
                    proj.weight.zero_()
                    proj.bias.zero_()
            model.transformer.ln_f.weight.zero_()
            wte = model.transformer.wte.weight
            wte.normal_(0, 0.02)
            wte[favoured] = 0
            wte[favoured, 0] = 5.0
            model.transformer.ln_f.bias.copy_(wte[favoured])
        return model.state_dict()
    return rewrite
