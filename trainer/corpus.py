"""Where documents come from: the built-in offline corpus, local files, or a Hugging Face dataset.

Every source is an iterator of document strings, in a fixed order.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path
from typing import Iterator, Optional

from trainer.errors import BadInput

FILE_SUFFIXES = ('.txt', '.md', '.rst', '.py', '.jsonl', '.json', '.parquet')


def builtin_documents() -> Iterator[str]:
    """~5 MB of real text that ships with every Python, no download: the help topics of
    `pydoc_data.topics` (English prose, ~465 KB, 79 documents), then the source of the top-level
    standard-library modules (code and docstrings), one document per file, sorted by name."""
    from pydoc_data.topics import topics
    for name in sorted(topics):
        yield topics[name]
    stdlib = Path(sysconfig.get_paths()['stdlib'])
    for path in sorted(stdlib.glob('*.py')):
        yield path.read_text(encoding='utf-8', errors='replace')


def builtin_document_count() -> int:
    from pydoc_data.topics import topics
    return len(topics) + len(list(Path(sysconfig.get_paths()['stdlib']).glob('*.py')))


def file_documents(paths: list[Path], text_field: str) -> Iterator[str]:
    """Plain text files are one document each; jsonl/json lines and parquet rows are one
    document per record (the `text_field` column)."""
    for path in paths:
        if path.suffix == '.parquet':
            import pyarrow.parquet as pq
            table = pq.read_table(path, columns=[text_field])
            yield from (t for t in table.column(text_field).to_pylist() if t)
        elif path.suffix in ('.jsonl', '.json'):
            with path.open(encoding='utf-8') as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)[text_field]
        else:
            yield path.read_text(encoding='utf-8', errors='replace')


def hf_documents(name: str, config: Optional[str], split: str, text_field: str) -> Iterator[str]:
    """Streamed from the hub (the Pile, FineWeb, ...): nothing is downloaded up front."""
    import datasets
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:
        raise BadInput(f'--source {name!r}: not a readable Hugging Face dataset ({e}); '
                       f'allowed: builtin, local text/jsonl/parquet files, or a hub dataset name') from e
    for record in ds:
        yield record[text_field]


def resolve_files(sources: list[str]) -> list[Path]:
    """Expand directories to the files with known suffixes inside them (sorted)."""
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob('*') if f.is_file() and f.suffix in FILE_SUFFIXES))
        elif p.is_file():
            if p.suffix not in FILE_SUFFIXES:
                raise BadInput(f'--source {s!r}: unsupported file type; allowed: {", ".join(FILE_SUFFIXES)}')
            files.append(p)
        else:
            raise BadInput(f'--source {s!r}: no such file or directory')
    return files


def open_source(sources: list[str], text_field: str = 'text', hf_config: Optional[str] = None,
                hf_split: str = 'train') -> tuple[Iterator[str], Optional[int], str]:
    """-> (documents, number of documents if known, description)."""
    if sources == ['builtin']:
        return builtin_documents(), builtin_document_count(), 'builtin'
    if any(Path(s).exists() for s in sources) or len(sources) > 1:
        files = resolve_files(sources)
        if not files:
            raise BadInput(f'--source {" ".join(sources)}: no text/jsonl/parquet files there')
        return file_documents(files, text_field), None, f'{len(files)} files'
    return hf_documents(sources[0], hf_config, hf_split, text_field), None, f'hf:{sources[0]}'
