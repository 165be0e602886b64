"""What a run was trained with, kept in the run directory so that sampling and export find it
long after the dataset has moved or been deleted:

    <run_dir>/model.json     the GPT's shape (trainer.gpt.GPTConfig fields) and the preset name
    <run_dir>/tokenizer/     the dataset's dataset.json and tokenizer files (tokenizer.json ...)

The worker writes both when it starts (rank 0, every link: the same content each time). Runs made
before that are read through their run.yaml (model preset, hydra overrides, data_root) instead.
Only the standard library at module level: train.py imports this before Composer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainer.dataset_format import DATASET_FILE
from trainer.errors import BadInput

MODEL_FILE = 'model.json'
TOKENIZER_DIR = 'tokenizer'
MODEL_FIELDS = ('vocab_size', 'block_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias')
# Whatever a dataset keeps to rebuild its tokenizer (BPE kinds: tokenizer.json).
TOKENIZER_FILES = (DATASET_FILE, 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'vocab.json', 'merges.txt')


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    tmp.write_bytes(data)
    os.replace(tmp, path)


def keep_run_inputs(run_dir: Path, data_dir: Path, model_cfg, vocab_size: int) -> None:
    """Record the model's shape and copy the dataset's tokenizer into the run directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shape = {k: model_cfg[k] for k in MODEL_FIELDS if k != 'vocab_size'}
    model = {'preset': str(model_cfg['name']), 'vocab_size': int(vocab_size), **shape}
    _write_atomic(run_dir / MODEL_FILE, (json.dumps(model, indent=1) + '\n').encode())
    out = run_dir / TOKENIZER_DIR
    out.mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        if (data_dir / name).is_file():
            _write_atomic(out / name, (data_dir / name).read_bytes())


# ---------------------------------------------------------------------------------------------
# Reading them back (sample, export)
# ---------------------------------------------------------------------------------------------

def _run_yaml(run_dir: Path) -> dict:
    import yaml
    path = run_dir / 'run.yaml'
    if not path.is_file():
        raise BadInput(f'{run_dir}: no {MODEL_FILE} or {TOKENIZER_DIR}/ (written by the worker when it '
                       f'starts) and no run.yaml to rebuild them from; allowed: a run directory')
    return yaml.safe_load(path.read_text()) or {}


def _composed_config(run_dir: Path) -> dict:
    """The trainer's config as the run's links composed it: preset plus the run's overrides."""
    from trainer.validate import compose
    spec = _run_yaml(run_dir)
    return compose([f'model={spec["model"]}', *spec.get('overrides', [])])


def tokenizer_dir(run_dir: Path) -> Path:
    """The directory holding the run's dataset.json (and tokenizer.json for BPE kinds)."""
    from trainer.dataset_format import resolve_dataset_path
    kept = run_dir / TOKENIZER_DIR
    if (kept / DATASET_FILE).is_file():
        return kept
    data_root = _run_yaml(run_dir).get('data_root')
    path = resolve_dataset_path(str(_composed_config(run_dir)['data']['path']),
                                Path(data_root) if data_root else None)
    if not (path / DATASET_FILE).is_file():
        raise BadInput(f'{run_dir}: no {TOKENIZER_DIR}/{DATASET_FILE}, and its data.path {path} has no '
                       f'{DATASET_FILE} either; allowed: a run whose dataset still exists')
    return path


def model_config(run_dir: Path) -> dict:
    """The GPTConfig fields the run trained with."""
    path = run_dir / MODEL_FILE
    if path.is_file():
        model = json.loads(path.read_text())
        return {k: model[k] for k in MODEL_FIELDS}
    cfg = _composed_config(run_dir)['model']
    model = {k: cfg[k] for k in MODEL_FIELDS}
    if model['vocab_size'] is None:  # the dataset's, as trainer.train.validate decides
        info = json.loads((tokenizer_dir(run_dir) / DATASET_FILE).read_text())
        model['vocab_size'] = int(info['tokenizer']['vocab_size'])
    return model


EOT = '<|endoftext|>'


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, the alphabet of tokenizers' ByteLevel."""
    printable = list(range(ord('!'), ord('~') + 1)) + list(range(ord('\xa1'), ord('\xac') + 1)) \
        + list(range(ord('\xae'), ord('\xff') + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_level_tokenizer():
    """The `bytes` kind as a Hugging Face tokenizer: id b is the byte b (0..255), 256 is
    end-of-text. A byte-level BPE without merges, so text -> UTF-8 bytes -> the same ids as
    trainer.tokenizer.ByteTokenizer, and decoding turns the ids back into those bytes."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    vocab = {c: b for b, c in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT, special=True)])  # id 256: the next free one
    return tok


def load_tokenizer(run_dir: Path):
    """The run's tokenizer as a `tokenizers.Tokenizer`, and its dataset.json "tokenizer" entry
    (kind, vocab_size, eos_id)."""
    return tokenizer_in(tokenizer_dir(run_dir))


def tokenizer_in(folder: Path):
    """The tokenizer of the dataset (or kept copy) in `folder`, and its dataset.json entry."""
    from tokenizers import Tokenizer
    info = json.loads((folder / DATASET_FILE).read_text())['tokenizer']
    if info['kind'] == 'bytes':
        tok = byte_level_tokenizer()
    elif (folder / 'tokenizer.json').is_file():
        tok = Tokenizer.from_file(str(folder / 'tokenizer.json'))
    else:
        raise BadInput(f'{folder}: tokenizer {info["kind"]!r} without a tokenizer.json; allowed: bytes, '
                       f'or a dataset prepared with its tokenizer.json')
    if tok.get_vocab_size() != info['vocab_size']:
        raise BadInput(f'{folder}: tokenizer.json has {tok.get_vocab_size()} ids but dataset.json says '
                       f'{info["vocab_size"]}; allowed: the files of one prepared dataset')
    return tok, info
