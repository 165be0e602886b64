"""Where evaluation data lives (standard library only, so trainer.validate can check it).

    <data_root>/evals/hellaswag/hellaswag_val.jsonl   the items (the original file's name)
    <data_root>/evals/hellaswag/manifest.json         written last: source, git blob id, sha256, items

`slmjobs eval-data fetch hellaswag` (a login node: the network) writes this layout; jobs only
read it. The launcher keeps its own copy of these names (the two sides never import each other);
docs/CONTRACTS.md holds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from trainer.dataset_format import data_root, resolve_dataset_path
from trainer.errors import BadInput

EVAL_DATA_DIR = 'evals'
MANIFEST = 'manifest.json'
HELLASWAG_FILE = 'hellaswag_val.jsonl'


def hellaswag_file(configured: Optional[str], root: Optional[Path] = None, name: str = '--data ') -> Path:
    """The HellaSwag items: `configured` (a file; relative to the data root), else the fetched copy
    (refused, one line, when it is not there)."""
    if configured is not None:
        path = resolve_dataset_path(str(configured), root)
        if not path.is_file():
            where = '' if str(path) == str(configured) else f' ({path})'
            raise BadInput(f'{name}{configured}: no such file{where}; allowed: a HellaSwag jsonl file')
        return path
    folder = ((root or data_root()) / EVAL_DATA_DIR / 'hellaswag').absolute()
    if not (folder / MANIFEST).is_file():
        raise BadInput(f'no HellaSwag data in {folder} (no {MANIFEST}); run `slmjobs eval-data fetch '
                       f'hellaswag` on a login node, or name a file with {name.strip()}FILE')
    return folder / HELLASWAG_FILE
