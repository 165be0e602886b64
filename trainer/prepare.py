"""Turn raw text into MDS shards of fixed token windows, ready for StreamingDataset.

    python -m trainer.prepare --source builtin --tokenizer bytes --out data/builtin
    python -m trainer.prepare --source HuggingFaceFW/fineweb-edu --hf-config sample-10BT \\
        --tokenizer gpt2 --out $SLMJOBS_DATA_ROOT/fineweb-edu --max-documents 1000000

Layout of the result:

    OUT/dataset.json     tokenizer (kind, vocab_size, eos_id), seq_len, bytes_per_token, counts.
                         Written last: its presence marks a finished dataset.
    OUT/tokenizer.json   the BPE tokenizer (bpe-builtin, gpt2) to decode samples
    OUT/train/, OUT/val/ MDS shards, column `tokens`: seq_len + 1 token ids per sample

Documents are joined with the end-of-text token into one stream that is cut into windows of
seq_len + 1 tokens overlapping by one, so every token is a target exactly once; the last partial
window is padded with end-of-text. Nothing is thrown away. Document i goes to the validation
split when i % round(1 / val_fraction) == 0.

The dataset is built in a hidden temporary directory beside OUT and renamed to OUT at the end,
so a killed preparation never looks finished. An existing finished dataset is only replaced
with --force (and then only once the new one is complete).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from trainer.errors import BadInput

DATASET_FILE = 'dataset.json'
FORMAT_VERSION = 1
DEFAULT_SEQ_LEN = 256
DEFAULT_VAL_FRACTION = 0.01
SHARD_SIZE_LIMIT = 1 << 26  # 64 MiB per shard
ENCODE_CHUNK = 64  # documents per tokenizer call


def data_root() -> Path:
    """The root for relative dataset names: $SLMJOBS_DATA_ROOT (the cluster profile's data_root),
    else ./data."""
    return Path(os.environ.get('SLMJOBS_DATA_ROOT') or 'data')


def is_finished_dataset(path: Path) -> bool:
    return (path / DATASET_FILE).is_file()


def read_dataset_info(path: Path) -> dict:
    return json.loads((path / DATASET_FILE).read_text())


class SplitWriter:
    """Concatenates documents (each followed by end-of-text) and writes fixed windows."""

    def __init__(self, out: Path, seq_len: int, eos_id: int, vocab_size: int):
        from streaming import MDSWriter
        dtype = 'uint16' if vocab_size <= 1 << 16 else 'uint32'
        self.np_dtype = np.dtype(dtype)
        self.writer = MDSWriter(out=str(out), columns={'tokens': f'ndarray:{dtype}'},
                                size_limit=SHARD_SIZE_LIMIT, progress_bar=False)
        self.window = seq_len + 1
        self.stride = seq_len
        self.eos_id = eos_id
        self.pending = np.zeros(0, dtype=self.np_dtype)
        self.documents = self.tokens = self.windows = self.bytes = 0

    def add(self, ids: np.ndarray, n_bytes: int) -> None:
        self.documents += 1
        self.tokens += len(ids) + 1
        self.bytes += n_bytes
        doc = np.empty(len(ids) + 1, dtype=self.np_dtype)
        doc[:-1] = ids
        doc[-1] = self.eos_id
        self.pending = np.concatenate([self.pending, doc])
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        n_full = max(0, (len(self.pending) - 1) // self.stride)
        for i in range(n_full):
            self.writer.write({'tokens': self.pending[i * self.stride:i * self.stride + self.window]})
        self.windows += n_full
        # Keep the last token of the last window: it is the first input of the next one.
        self.pending = self.pending[n_full * self.stride:]
        if final and len(self.pending) > 1:
            tail = np.full(self.window, self.eos_id, dtype=self.np_dtype)
            tail[:len(self.pending)] = self.pending
            self.writer.write({'tokens': tail})
            self.windows += 1

    def finish(self) -> dict:
        self._flush(final=True)
        self.writer.finish()
        shards = len(json.loads((Path(self.writer.local) / 'index.json').read_text())['shards'])
        return {'documents': self.documents, 'tokens': self.tokens, 'windows': self.windows,
                'bytes': self.bytes, 'shards': shards}


def _progress(total: Optional[int]):
    from tqdm import tqdm
    return tqdm(total=total, unit='doc', desc='tokenizing', file=sys.stderr,
                mininterval=1.0, dynamic_ncols=True)


def _chunks(docs: Iterable[str], size: int) -> Iterable[list[str]]:
    chunk: list[str] = []
    for d in docs:
        if d:
            chunk.append(d)
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _check_out(out: Path, force: bool) -> None:
    if is_finished_dataset(out) and not force:
        raise BadInput(f'--out {out}: a finished dataset is already there; '
                       f'pass --force to replace it, or choose another --out')
    if out.exists() and not out.is_dir():
        raise BadInput(f'--out {out}: exists and is not a directory')
    if out.is_dir() and any(out.iterdir()) and not is_finished_dataset(out):
        raise BadInput(f'--out {out}: directory is not empty and is not a dataset; '
                       f'choose an empty or new directory')


def _scratch_prefix(out: Path) -> str:
    """`.NAME.tmp-HOST-`: a preparation builds in `.NAME.tmp-HOST-PID` beside `out`."""
    return f'.{out.name}.tmp-{socket.gethostname()}-'


def _remove_abandoned_scratch(out: Path) -> None:
    """Scratch directories of preparations killed on this host (SIGKILL runs no cleanup).
    Other hosts' are left alone: on a shared filesystem their owner may still be writing."""
    prefix = _scratch_prefix(out)
    for path in out.parent.glob(glob.escape(prefix) + '*'):
        pid = path.name[len(prefix):]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _install(tmp: Path, out: Path) -> None:
    """Move the finished temporary directory into place; the old dataset (if any, --force) is
    removed only after the new one is there."""
    old = None
    if out.exists():
        old = out.with_name(f'.{out.name}.old-{os.getpid()}')
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old)


def prepare(sources: list[str], out: Path, tokenizer: str = 'bytes', seq_len: int = DEFAULT_SEQ_LEN,
            val_fraction: float = DEFAULT_VAL_FRACTION, force: bool = False,
            max_documents: Optional[int] = None, text_field: str = 'text',
            hf_config: Optional[str] = None, hf_split: str = 'train', quiet: bool = False) -> dict:
    """Prepare a dataset at `out`; returns its dataset.json contents. Raises BadInput."""
    from trainer.corpus import open_source
    from trainer.tokenizer import make_tokenizer

    out = Path(out).absolute()
    if seq_len < 1:
        raise BadInput(f'--seq-len {seq_len}: must be a positive number of tokens')
    if not 0 < val_fraction <= 0.5:
        raise BadInput(f'--val-fraction {val_fraction}: allowed range is (0, 0.5]')
    _check_out(out, force)
    started = time.time()
    tok = make_tokenizer(tokenizer)
    docs, total, description = open_source(sources, text_field, hf_config, hf_split)
    if max_documents is not None:
        total = min(total, max_documents) if total is not None else max_documents

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_scratch(out)
    tmp = out.with_name(_scratch_prefix(out) + str(os.getpid()))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        val_every = max(1, round(1 / val_fraction))
        writers = {name: SplitWriter(tmp / name, seq_len, tok.eos_id, tok.vocab_size)
                   for name in ('train', 'val')}
        tokenizing_started = time.time()  # after the imports (~8 s) and any tokenizer training
        index = 0
        bar = None
        for chunk in _chunks(docs, ENCODE_CHUNK):
            if bar is None and not quiet:
                bar = _progress(total)  # only once there is text: an empty corpus is one error line
            if max_documents is not None:
                chunk = chunk[:max_documents - index]
            for text, ids in zip(chunk, tok.encode_batch(chunk)):
                split = 'val' if index % val_every == 0 else 'train'
                writers[split].add(ids, len(text.encode('utf-8')))
                index += 1
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(tokens=writers['train'].tokens + writers['val'].tokens, refresh=False)
            if max_documents is not None and index >= max_documents:
                break
        if bar is not None:
            bar.close()
        splits = {name: w.finish() for name, w in writers.items()}
        if index == 0:
            raise BadInput(f'--source {" ".join(sources)}: the corpus is empty (no non-empty documents)')
        if splits['train']['windows'] == 0:
            raise BadInput(f'--source {" ".join(sources)}: only {index} document(s); need at least 2 '
                           f'(one goes to the validation split)')
        total_tokens = sum(s['tokens'] for s in splits.values())
        total_bytes = sum(s['bytes'] for s in splits.values())
        tok.save(tmp)
        info = {
            'format': FORMAT_VERSION,
            'source': description,
            'tokenizer': {'kind': tok.kind, 'vocab_size': tok.vocab_size, 'eos_id': tok.eos_id},
            'seq_len': seq_len,
            'window': seq_len + 1,
            # UTF-8 bytes per stored token (end-of-text included): turns nats/token into bits/byte.
            'bytes_per_token': total_bytes / total_tokens,
            'val_fraction': val_fraction,
            'splits': splits,
            'seconds': round(time.time() - started, 3),
            'tokenize_seconds': round(time.time() - tokenizing_started, 3),
            'created_at': time.time(),
        }
        (tmp / DATASET_FILE).write_text(json.dumps(info, indent=1) + '\n')  # the completion marker
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def prepare_builtin(out_dir, tokenizer: str = 'bytes', seq_len: int = DEFAULT_SEQ_LEN,
                    val_fraction: float = DEFAULT_VAL_FRACTION, force: bool = False,
                    max_documents: Optional[int] = None, quiet: bool = True) -> Path:
    """The offline demo/test dataset; returns its path. For other test suites too."""
    out = Path(out_dir)
    if not (is_finished_dataset(out) and not force):
        prepare(['builtin'], out, tokenizer=tokenizer, seq_len=seq_len, val_fraction=val_fraction,
                force=force, max_documents=max_documents, quiet=quiet)
    return out


def summary(out: Path, info: dict) -> str:
    tr, va = info['splits']['train'], info['splits']['val']
    docs = tr['documents'] + va['documents']
    tokens = tr['tokens'] + va['tokens']
    rate = tokens / max(info['tokenize_seconds'], 1e-9)
    return (f'prepared {out}: {docs} documents, {tokens} tokens ({info["tokenizer"]["kind"]}, '
            f'{info["bytes_per_token"]:.3f} bytes/token), {tr["windows"]} train + {va["windows"]} val '
            f'windows of {info["window"]} tokens in {tr["shards"] + va["shards"]} shards, '
            f'{info["seconds"]:.1f} s in all ({rate:,.0f} tokens/s tokenizing and writing)')


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='python -m trainer.prepare', description=__doc__.split('\n\n')[0])
    p.add_argument('--source', nargs='+', required=True,
                   help='builtin | a Hugging Face dataset name | text/jsonl/parquet files or directories')
    p.add_argument('--tokenizer', default=None,
                   help='bytes | bpe-builtin | gpt2 (default: bytes for builtin, gpt2 otherwise)')
    p.add_argument('--out', default=None,
                   help='output directory (default: $SLMJOBS_DATA_ROOT/builtin or ./data/builtin for builtin)')
    p.add_argument('--seq-len', type=int, default=DEFAULT_SEQ_LEN, help='tokens per training sequence')
    p.add_argument('--val-fraction', type=float, default=DEFAULT_VAL_FRACTION)
    p.add_argument('--max-documents', type=int, default=None, help='stop after this many documents')
    p.add_argument('--text-field', default='text', help='the text column of jsonl/parquet/hub records')
    p.add_argument('--hf-config', default=None, help='hub dataset configuration (e.g. sample-10BT)')
    p.add_argument('--hf-split', default='train')
    p.add_argument('--force', action='store_true', help='replace a finished dataset at --out')
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    builtin = args.source == ['builtin']
    tokenizer = args.tokenizer or ('bytes' if builtin else 'gpt2')
    if args.out is None:
        if not builtin:
            print('error: --out is required unless --source builtin', file=sys.stderr)
            return 2
        args.out = str(data_root() / 'builtin')
    out = Path(args.out).absolute()
    try:
        info = prepare(args.source, out, tokenizer=tokenizer, seq_len=args.seq_len,
                       val_fraction=args.val_fraction, force=args.force,
                       max_documents=args.max_documents, text_field=args.text_field,
                       hf_config=args.hf_config, hf_split=args.hf_split)
    except BadInput as e:
        print(f'error: {e}', file=sys.stderr)
        return e.exit_code
    print(summary(out, info))
    return 0


if __name__ == '__main__':
    sys.exit(main())
