"""Tokenizers for data preparation.

- `bytes`: UTF-8 bytes (ids 0..255) plus an end-of-text id 256. Needs nothing, never fails.
- `bpe-builtin`: a byte-level BPE (4096 ids) trained with the `tokenizers` package on the
  built-in corpus (trainer.corpus), so it is offline and deterministic. Saved as tokenizer.json.
- `gpt2`: GPT-2's BPE (50257 ids, <|endoftext|> = 50256) via transformers; downloads once.
"""

from __future__ import annotations

import numpy as np

from trainer.errors import BadInput

TOKENIZERS = ('bytes', 'bpe-builtin', 'gpt2')
EOT = '<|endoftext|>'


class ByteTokenizer:
    kind = 'bytes'
    vocab_size = 257
    eos_id = 256

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode('utf-8'), dtype=np.uint8).astype(np.uint32) for t in texts]

    def save(self, out_dir) -> None:
        pass


class HFTokenizer:
    """A `tokenizers.Tokenizer` (Rust, batch-parallel)."""

    def __init__(self, kind: str, tok):
        self.kind = kind
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eos_id = tok.token_to_id(EOT)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.uint32) for e in self.tok.encode_batch(texts)]

    def save(self, out_dir) -> None:
        self.tok.save(str(out_dir / 'tokenizer.json'))


def train_builtin_bpe(vocab_size: int = 4096) -> HFTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from trainer.corpus import builtin_documents

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(builtin_documents(), trainer=trainer)
    return HFTokenizer('bpe-builtin', tok)


def gpt2_tokenizer() -> HFTokenizer:
    try:
        from transformers import AutoTokenizer
        fast = AutoTokenizer.from_pretrained('gpt2')
    except Exception as e:  # offline, hub down, ...
        raise BadInput(f'tokenizer gpt2: could not load it from the Hugging Face hub ({e}); '
                       f'it needs the network once, or use one of: bytes, bpe-builtin') from e
    return HFTokenizer('gpt2', fast.backend_tokenizer)


def make_tokenizer(kind: str):
    if kind == 'bytes':
        return ByteTokenizer()
    if kind == 'bpe-builtin':
        return train_builtin_bpe()
    if kind == 'gpt2':
        return gpt2_tokenizer()
    raise BadInput(f'--tokenizer {kind!r}: unknown; allowed: {", ".join(TOKENIZERS)}')
