"""Where documents come from: the built-in offline corpus, local files, or a Hugging Face dataset.

Every source yields document strings in a fixed order and can say, between two documents, where
it is (`position()`: plain JSON). `documents(position)` starts again from such a position without
re-reading what came before it where the source allows (a file offset, a hub stream's
`state_dict()`), so a killed preparation resumes where its last complete piece ended.
"""

from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path
from typing import Iterator, Optional

from trainer.errors import BadInput

FILE_SUFFIXES = ('.txt', '.md', '.rst', '.py', '.jsonl', '.json', '.parquet')
RECORD_SUFFIXES = ('.jsonl', '.json')


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


class BuiltinSource:
    description = named = 'builtin'

    def __init__(self):
        self.total = builtin_document_count()
        self.fingerprint = {'source': 'builtin'}
        self._done = 0

    def position(self) -> dict:
        return {'document': self._done}

    def documents(self, position: Optional[dict] = None) -> Iterator[str]:
        skip = (position or {}).get('document', 0)
        self._done = 0
        for text in builtin_documents():
            self._done += 1
            if self._done > skip:
                yield text


class FileSource:
    """Plain text files are one document each; jsonl/json lines and parquet rows are one
    document per record (the `text_field` column). The position is (file, byte offset, line)."""

    def __init__(self, files: list[Path], text_field: str, named: str):
        self.files = files
        self.named = named  # as given to --source, for messages
        self.text_field = text_field
        self.total = None
        self.description = f'{len(files)} files'
        # A file that changed since the preparation started would make a resumed dataset a mixture.
        self.fingerprint = {'source': 'files', 'files': [_file_identity(f) for f in files],
                            'text_field': text_field}
        self._at = {'file': 0, 'offset': 0, 'line': 0}

    def position(self) -> dict:
        return dict(self._at)

    def documents(self, position: Optional[dict] = None) -> Iterator[str]:
        start = position or {'file': 0, 'offset': 0, 'line': 0}
        for i in range(start['file'], len(self.files)):
            first = start if i == start['file'] else {'offset': 0, 'line': 0}
            self._at = {'file': i, 'offset': first['offset'], 'line': first['line']}
            yield from self._file_documents(self.files[i])
            self._at = {'file': i + 1, 'offset': 0, 'line': 0}

    def _file_documents(self, path: Path) -> Iterator[str]:
        try:
            if path.suffix == '.parquet':
                yield from self._parquet_rows(path)
            elif path.suffix in RECORD_SUFFIXES:
                yield from self._json_lines(path)
            else:
                text = text_of(path, path.read_bytes())
                self._at = {'file': self._at['file'] + 1, 'offset': 0, 'line': 0}
                yield text
        except OSError as e:
            raise BadInput(f'--source {path}: cannot read it ({e.strerror or e})') from e

    def _json_lines(self, path: Path) -> Iterator[str]:
        with path.open('rb') as f:
            f.seek(self._at['offset'])
            for raw in f:
                at = self._at
                self._at = {'file': at['file'], 'offset': at['offset'] + len(raw), 'line': at['line'] + 1}
                if raw.strip():
                    yield self._record_text(raw, path, self._at['line'])

    def _record_text(self, raw: bytes, path: Path, line: int) -> str:
        try:
            record = json.loads(raw)
        except ValueError as e:
            raise BadInput(f'--source {path}: line {line} is not JSON ({e})') from e
        text = record.get(self.text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise BadInput(f'--source {path}: line {line} has no string field {self.text_field!r} '
                           f'(choose the field with --text-field)')
        return text

    def _parquet_rows(self, path: Path) -> Iterator[str]:
        import pyarrow.parquet as pq
        parquet = pq.ParquetFile(path)
        if self.text_field not in parquet.schema_arrow.names:
            raise BadInput(f'--source {path}: no column {self.text_field!r} (choose it with --text-field); '
                           f'columns: {", ".join(parquet.schema_arrow.names)}')
        skip = self._at['line']
        row = 0
        for batch in parquet.iter_batches(columns=[self.text_field]):
            for text in batch.column(0).to_pylist():
                row += 1
                if row <= skip:
                    continue
                self._at = {'file': self._at['file'], 'offset': 0, 'line': row}
                if text:
                    yield text


def text_of(path: Path, data: bytes) -> str:
    """A text file's contents; BadInput naming the first byte that says it is not UTF-8 text (a
    binary file named .txt would otherwise go into the dataset as replacement characters)."""
    nul = data.find(b'\0')
    if nul >= 0:
        raise BadInput(f'--source {path}: not a text file (a NUL byte at offset {nul}); allowed: '
                       f'UTF-8 text files')
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise BadInput(f'--source {path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset '
                       f'{e.start}); allowed: UTF-8 text files (convert it first, e.g. iconv -t '
                       f'UTF-8)') from None


def _file_identity(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


class HubSource:
    """Streamed from the hub (the Pile, FineWeb, ...): nothing is downloaded up front. The position
    is the stream's `state_dict()`, so a resumed preparation does not read the consumed part again."""

    def __init__(self, name: str, config: Optional[str], split: str, text_field: str,
                 data_files: Optional[list[str]] = None):
        self.name, self.config, self.split, self.text_field = name, config, split, text_field
        self.data_files = data_files  # a local builder ('json', 'text') with files: for tests
        self.total = None
        self.description = f'hf:{name}'
        self.named = name
        self.fingerprint = {'source': 'hf', 'name': name, 'config': config, 'split': split,
                            'text_field': text_field, 'data_files': data_files}
        self._stream = None

    def position(self) -> Optional[dict]:
        return self._stream.state_dict() if self._stream is not None else None

    def documents(self, position: Optional[dict] = None) -> Iterator[str]:
        import datasets
        try:
            self._stream = datasets.load_dataset(self.name, self.config, split=self.split, streaming=True,
                                                 data_files=self.data_files)
        except Exception as e:
            raise BadInput(f'--source {self.name!r}: not a readable Hugging Face dataset ({e}); allowed: '
                           f'builtin, local text/jsonl/parquet files, or a hub dataset name') from e
        if position is not None:
            self._stream.load_state_dict(position)
        for record in self._stream:
            text = record.get(self.text_field)
            if not isinstance(text, str):
                raise BadInput(f'--source {self.name}: a record has no string field {self.text_field!r} '
                               f'(choose the field with --text-field)')
            yield text


def resolve_files(sources: list[str]) -> list[Path]:
    """Expand directories to the files with known suffixes inside them (sorted); every file
    must be readable now, so a bad one is refused before any work."""
    files: list[Path] = []
    for s in sources:
        p = Path(s).absolute()
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob('*') if f.is_file() and f.suffix in FILE_SUFFIXES))
        elif p.is_file():
            if p.suffix not in FILE_SUFFIXES:
                raise BadInput(f'--source {s!r}: unsupported file type; allowed: {", ".join(FILE_SUFFIXES)}')
            files.append(p)
        else:
            raise BadInput(f'--source {s!r}: no such file or directory')
    for f in files:
        if not os.access(f, os.R_OK):
            raise BadInput(f'--source {f}: cannot read it (permission denied)')
    return files


def open_source(sources: list[str], text_field: str = 'text', hf_config: Optional[str] = None,
                hf_split: str = 'train'):
    """-> a BuiltinSource, FileSource or HubSource."""
    if sources == ['builtin']:
        return BuiltinSource()
    if any(Path(s).exists() for s in sources) or len(sources) > 1:
        files = resolve_files(sources)
        if not files:
            raise BadInput(f'--source {" ".join(sources)}: no text/jsonl/parquet files there')
        return FileSource(files, text_field, ' '.join(sources))
    return HubSource(sources[0], hf_config, hf_split, text_field)

