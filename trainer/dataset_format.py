"""A prepared dataset's description, dataset.json: where datasets live and how to read one.

Standard library only, so the configuration checks (trainer.validate) and the launcher can read
it without numpy, torch or streaming. trainer.prepare writes the file; this module reads it.

    <dataset>/dataset.json   format, tokenizer {kind, vocab_size, eos_id}, seq_len, window,
                             bytes_per_token, splits {train, val: {documents, tokens, windows}}.
                             Written last: its presence marks a finished dataset.
    <dataset>/train/, val/   MDS shards (each with its index.json)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from trainer.errors import BadInput

DATASET_FILE = 'dataset.json'
FORMAT_VERSION = 1
SPLITS = ('train', 'val')


def data_root() -> Path:
    """The root for relative dataset names: $SLMJOBS_DATA_ROOT (the cluster profile's data_root),
    else ./data."""
    return Path(os.environ.get('SLMJOBS_DATA_ROOT') or 'data')


def resolve_dataset_path(path: str, root: Optional[Path] = None, workdir: Optional[Path] = None) -> Path:
    """An absolute dataset directory: `~` expanded, a relative path taken under the data root
    (itself, if relative, under `workdir`: by default this process's working directory)."""
    p = Path(os.path.expanduser(path))
    return (p if p.is_absolute() else Path(workdir or '') / (root or data_root()) / p).absolute()


def is_finished_dataset(path: Path) -> bool:
    return (path / DATASET_FILE).is_file()


def has_split(path: Path, split: str) -> bool:
    return (path / split / 'index.json').is_file()


def read_dataset_info(path: Path) -> dict:
    """dataset.json, checked for what training relies on; BadInput names what is wrong."""
    file = path / DATASET_FILE
    try:
        info = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f'{file}: not a readable dataset description ({type(e).__name__}); '
                       f're-prepare it with python -m trainer.prepare --force') from None
    if not isinstance(info, dict) or info.get('format') != FORMAT_VERSION:
        found = info.get('format') if isinstance(info, dict) else None
        raise BadInput(f'{file}: format {found!r}; allowed: {FORMAT_VERSION} '
                       f'(re-prepare it with python -m trainer.prepare --force)')
    try:
        int(info['seq_len']), int(info['tokenizer']['vocab_size']), float(info['bytes_per_token'])
        int(info['splits']['train']['windows'])
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(f'{file}: missing or malformed field {e}; '
                       f're-prepare it with python -m trainer.prepare --force') from None
    return info
