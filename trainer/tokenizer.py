"""Tokenizers for data preparation, chosen by `--tokenizer SPEC`:

- `bytes`: UTF-8 bytes (ids 0..255) plus an end-of-text id 256. Needs nothing, never fails.
- `bpe-builtin`: a byte-level BPE (4096 ids) trained with the `tokenizers` package on the
  built-in corpus (trainer.corpus), so it is offline and deterministic.
- `gpt2`: GPT-2's BPE (50257 ids, <|endoftext|> = 50256) from a local vocabulary, no network:
  scripts/setup.sh puts `gpt2.tiktoken` (from the openai-whisper sdist; its sha256 is tiktoken's
  r50k_base) at GPT2_VOCAB under the venv. `--tokenizer PATH/gpt2.tiktoken` names another copy.
  Encoded with tiktoken; saved as an equivalent Hugging Face tokenizer.json.
- a path to a `tokenizer.json` (Hugging Face `tokenizers` format).
- a Hugging Face tokenizer name (`openai-community/gpt2`; downloaded by transformers) or a local
  directory where a name would go (what `save_pretrained` writes).

Every kind but `bytes` leaves `tokenizer.json` in the dataset, so the dataset decodes offline.
Encoding is single-threaded per process on purpose: preparation runs one process per worker.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from trainer.errors import BadInput

BUILTIN = ('bytes', 'bpe-builtin', 'gpt2')
EOT = '<|endoftext|>'
END_TOKENS = (EOT, '</s>', '<|end_of_text|>', '<eos>')  # what end-of-text is called in the wild
TOKENIZER_FILE = 'tokenizer.json'
GPT2_VOCAB = Path(sys.prefix) / 'share' / 'slmjobs' / 'gpt2.tiktoken'
GPT2_VOCAB_SHA256 = '306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930'  # r50k_base
ALLOWED = ('bytes, bpe-builtin, gpt2, a .tiktoken GPT-2 vocabulary, a tokenizer.json, '
           'a Hugging Face tokenizer name or directory')


class ByteTokenizer:
    kind = 'bytes'
    vocab_size = 257
    eos_id = 256

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode('utf-8'), dtype=np.uint8) for t in texts]

    def save(self, out_dir: Path) -> Optional[str]:
        return None  # ids 0..255 are the bytes: nothing to keep


class HFTokenizer:
    """A `tokenizers.Tokenizer` (Rust). Picklable, so it travels to worker processes."""

    def __init__(self, kind: str, tok, eos_token: Optional[str] = None, spec: str = ''):
        self.kind = kind
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eos_id = _eos_id(tok, eos_token, spec or kind)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        # encode_batch threads over all cores unless TOKENIZERS_PARALLELISM=false (see prepare).
        return [np.asarray(e.ids, dtype=np.uint32) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def save(self, out_dir: Path) -> Optional[str]:
        self.tok.save(str(out_dir / TOKENIZER_FILE))
        return TOKENIZER_FILE


class TiktokenGPT2:
    """GPT-2's BPE through tiktoken (several times faster than `tokenizers` on the same text)."""

    kind = 'gpt2'
    vocab_size = 50257
    eos_id = 50256

    def __init__(self, vocab: Path):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
        from tiktoken_ext.openai_public import r50k_pat_str
        self.vocab = vocab
        self.enc = tiktoken.Encoding('gpt2', pat_str=r50k_pat_str,
                                     mergeable_ranks=load_tiktoken_bpe(str(vocab)),
                                     special_tokens={EOT: self.eos_id})

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        # disallowed_special=(): a literal '<|endoftext|>' in a document is text, as encode_ordinary
        return [self.enc.encode_to_numpy(t, disallowed_special=()) for t in texts]

    def save(self, out_dir: Path) -> Optional[str]:
        gpt2_to_hf(self.vocab).save(str(out_dir / TOKENIZER_FILE))
        return TOKENIZER_FILE


def gpt2_to_hf(vocab: Path):
    """The same GPT-2 BPE as a `tokenizers.Tokenizer` (byte-level vocab and merges rebuilt from
    the ranks by transformers' converter), for whoever decodes the dataset later."""
    from tiktoken_ext.openai_public import r50k_pat_str
    from transformers.convert_slow_tokenizer import TikTokenConverter
    return TikTokenConverter(vocab_file=str(vocab), pattern=r50k_pat_str,
                             additional_special_tokens=[EOT]).converted()


def _eos_id(tok, preferred: Optional[str], spec: str) -> int:
    for name in ((preferred,) if preferred else ()) + END_TOKENS:
        eos = tok.token_to_id(name)
        if eos is not None:
            return eos
    raise BadInput(f'--tokenizer {spec}: the tokenizer has no end-of-text token (looked for '
                   f'{", ".join(END_TOKENS)}); documents are joined with one')


BPE_BUILTIN_VOCAB = 4096


def train_builtin_bpe(vocab_size: int = BPE_BUILTIN_VOCAB) -> HFTokenizer:
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


def gpt2_tokenizer(vocab: Path) -> TiktokenGPT2:
    check_gpt2_vocab(vocab)
    return TiktokenGPT2(vocab)


def check_gpt2_vocab(vocab: Path) -> None:
    if not vocab.is_file():
        raise BadInput(f'--tokenizer gpt2: no GPT-2 vocabulary at {vocab}; run scripts/setup.sh '
                       f'(it installs one from the openai-whisper sdist) or pass --tokenizer PATH/gpt2.tiktoken')
    digest = hashlib.sha256(vocab.read_bytes()).hexdigest()
    if digest != GPT2_VOCAB_SHA256:
        raise BadInput(f'--tokenizer {vocab}: not GPT-2\'s vocabulary (sha256 {digest[:12]}..., '
                       f'expected r50k_base {GPT2_VOCAB_SHA256[:12]}...)')


def tokenizer_file(path: Path, kind: str = 'hf') -> HFTokenizer:
    from tokenizers import Tokenizer
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # not JSON, not a tokenizer, unreadable: the message says which
        raise BadInput(f'--tokenizer {path}: does not load as a tokenizers tokenizer.json ({e})') from e
    return HFTokenizer(kind, tok, spec=str(path))


def hf_named(name: str) -> HFTokenizer:
    """A hub name or a local directory from save_pretrained (offline: no network needed)."""
    try:
        from transformers import AutoTokenizer
        fast = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # offline, hub down, no such name, not a tokenizer directory
        raise BadInput(f'--tokenizer {name!r}: could not load it as a Hugging Face tokenizer ({e}); '
                       f'allowed: {ALLOWED}') from e
    if not getattr(fast, 'is_fast', False):
        raise BadInput(f'--tokenizer {name!r}: has no fast (tokenizers) version to save as tokenizer.json')
    return HFTokenizer('hf', fast.backend_tokenizer, fast.eos_token, spec=name)


def make_tokenizer(spec: str, saved: Optional[Path] = None):
    """The tokenizer `spec` names. `saved`: the tokenizer.json a killed preparation already
    wrote; a resumed one loads it rather than train or download again."""
    if spec == 'bytes':
        return ByteTokenizer()
    if spec == 'gpt2' or spec.endswith('.tiktoken'):
        return gpt2_tokenizer(GPT2_VOCAB if spec == 'gpt2' else Path(spec).absolute())
    kind = 'bpe-builtin' if spec == 'bpe-builtin' else 'hf'
    if saved is not None and saved.is_file():
        return tokenizer_file(saved, kind)
    if spec == 'bpe-builtin':
        return train_builtin_bpe()
    path = Path(spec)
    if path.is_file():
        return tokenizer_file(path.absolute())
    if path.is_dir() or '/' in spec:
        return hf_named(spec)
    raise BadInput(f'--tokenizer {spec!r}: unknown; allowed: {ALLOWED}')


def vocabulary_size(spec: str) -> int:
    """The vocabulary `spec` gives, at the least cost: known sizes for the built-in kinds (no BPE
    training, no tiktoken), loading the tokenizer otherwise. Raises BadInput as make_tokenizer."""
    if spec == 'bytes':
        return ByteTokenizer.vocab_size
    if spec == 'bpe-builtin':
        return BPE_BUILTIN_VOCAB
    if spec == 'gpt2' or spec.endswith('.tiktoken'):
        check_gpt2_vocab(GPT2_VOCAB if spec == 'gpt2' else Path(spec).absolute())
        return TiktokenGPT2.vocab_size
    return make_tokenizer(spec).vocab_size


def describe(spec: str) -> str:
    """The spec as recorded for a resume check: paths made absolute."""
    if spec in BUILTIN or not os.path.exists(spec):
        return spec
    return str(Path(spec).absolute())
