"""Turn raw text into MDS shards of fixed token windows, ready for StreamingDataset.

    python -m trainer.prepare --source builtin --tokenizer bytes --out data/builtin
    python -m trainer.prepare --source HuggingFaceFW/fineweb-edu --hf-config sample-10BT \\
        --tokenizer gpt2 --out $SLMJOBS_DATA_ROOT/fineweb-edu --max-documents 1000000

Layout of a finished dataset:

    OUT/dataset.json       tokenizer (kind, vocab_size, eos_id, file), seq_len, bytes_per_token,
                           counts, the recorded arguments. Written last: its presence marks a
                           finished dataset.
    OUT/tokenizer.json     the tokenizer in Hugging Face `tokenizers` format, for every kind but
                           bytes (ids 0..255 are the bytes, 256 end-of-text): decodes offline
    OUT/train/, OUT/val/   MDS: index.json over piece-NNNNNN/shard.*.mds, column `tokens`:
                           seq_len + 1 token ids per sample
    OUT/pieces.jsonl       the journal: line 1 the arguments, then one line per finished piece

Documents are joined with the end-of-text token into one stream per split that is cut into
windows of seq_len + 1 tokens overlapping by one, so every token is a target exactly once; the
last partial window is padded with end-of-text. Nothing is thrown away. Document i (counting
non-empty ones) goes to the validation split when i % round(1 / val_fraction) == 0.

Parallel and resumable: the document stream is cut into pieces of about --piece-chars characters
(whole documents, so the cut does not depend on the number of workers); --workers processes
tokenize pieces, a bounded number in flight; this process cuts windows and writes each piece's
shards in piece order, so the dataset is byte-identical for any --workers. A piece is recorded
in the journal only after its shards are fsynced and renamed into place, with what resuming
needs: the source position after it and the tokens left over for the next window. The work is
done in `.NAME.partial` beside OUT (locked while a preparation runs), renamed to OUT once
dataset.json is written. Killed at any moment, the same command continues from the last recorded
piece; a different one is refused with what differs (--force discards the unfinished one). An
existing finished dataset is only replaced with --force, and only once the new one is complete.

Exit status: 0; 2 for bad input (nothing of it kept); 74 when the filesystem is full or the quota
spent (the recorded pieces are kept: the same command continues after them once there is room);
73 when it is read-only or --out may not be written there. One line on stderr each. A failed
preparation removes what it made -- its work directory (after a full disk: all but the recorded
pieces), the empty directories above --out it created -- and nothing else.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

# dataset.json's reader owns its name, format and the finished-dataset rule (re-exported here)
from trainer.dataset_format import (DATASET_FILE, FORMAT_VERSION, SPLITS, data_root,  # noqa: F401
                                    is_finished_dataset, read_dataset_info)
from trainer.errors import EXIT_DISK_FULL, BadInput
from trainer.failures import filesystem_failure
from trainer.files import parents_made_for, replace_directory
from trainer.mds import write_shards

JOURNAL_FILE = 'pieces.jsonl'
MARKER_TMP = f'.{DATASET_FILE}.tmp'
DEFAULT_SEQ_LEN = 256
DEFAULT_VAL_FRACTION = 0.01
DEFAULT_PIECE_CHARS = 8 << 20  # ~8 MB of text: ~2M GPT-2 tokens, a few seconds per worker
SHARD_SIZE_LIMIT = 1 << 26  # 64 MiB per shard
# Testing aid only: SLMJOBS_PREPARE_HOLD_PIECE=K stops (sleeps) while piece K is half written
# (train shards on disk, val not yet, nothing renamed), so a test can SIGKILL it mid-write.
HOLD_ENV = 'SLMJOBS_PREPARE_HOLD_PIECE'


def default_workers() -> int:
    """The CPUs this process may use (its affinity: what a batch scheduler's cgroup or binding
    allows), capped by $SLMJOBS_CPUS (the job script sets it to the slots it was granted)."""
    cpus = len(os.sched_getaffinity(0))
    cap = os.environ.get('SLMJOBS_CPUS')
    if cap is not None:
        if not cap.strip().isdigit() or int(cap) < 1:
            raise BadInput(f'SLMJOBS_CPUS={cap!r}: must be a positive whole number of CPUs')
        cpus = min(cpus, int(cap))
    return cpus


# --- pieces: cut in the reading process, tokenized by the workers -----------------------------

class Piece:
    def __init__(self, index: int, first_document: int, texts: list[str], position):
        self.index = index
        self.first_document = first_document  # global index of texts[0]: decides the split
        self.texts = texts
        self.position = position  # the source's position after the last of them


def cut_pieces(source, position, index: int, documents: int, piece_chars: int,
               max_documents: Optional[int]) -> Iterator[Piece]:
    """Whole non-empty documents, about piece_chars characters per piece, from `position` on."""
    if max_documents is not None and documents >= max_documents:
        return
    texts: list[str] = []
    chars = 0
    for text in source.documents(position):
        if not text:
            continue
        texts.append(text)
        chars += len(text)
        documents += 1
        last = max_documents is not None and documents >= max_documents
        if chars >= piece_chars or last:
            yield Piece(index, documents - len(texts), texts, source.position())
            index, texts, chars = index + 1, [], 0
            if last:
                return
    if texts:
        yield Piece(index, documents - len(texts), texts, source.position())


def tokenize_piece(tok, texts: list[str], first_document: int, val_every: int, dtype: str) -> dict:
    """-> {split: (token stream with end-of-text after each document, documents, UTF-8 bytes)}."""
    ids = tok.encode(texts)
    eos = np.array([tok.eos_id], dtype=dtype)
    parts: dict = {s: [] for s in SPLITS}
    counts = {s: [0, 0] for s in SPLITS}
    for i, (text, doc) in enumerate(zip(texts, ids)):
        split = 'val' if (first_document + i) % val_every == 0 else 'train'
        parts[split] += [doc, eos]
        counts[split][0] += 1
        counts[split][1] += len(text) if text.isascii() else len(text.encode('utf-8'))  # isascii: O(1)
    # One pass: concatenating and narrowing to the shard dtype at once (ids fit: vocab_size).
    return {s: (np.concatenate(parts[s], dtype=dtype, casting='unsafe') if parts[s] else np.zeros(0, dtype),
                *counts[s]) for s in SPLITS}


_worker_tokenizer = None
_all_started = None  # a Barrier of the pool's size


def _start_worker(tok, all_started, parent: int) -> None:
    global _worker_tokenizer, _all_started
    _die_with(parent)
    os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # one process per core already
    _worker_tokenizer, _all_started = tok, all_started


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(parent: int) -> None:
    """SIGKILL this worker when the preparing process dies: killed (a user's kill -9, a job's
    end), it cannot shut the pool down, and the workers, each holding the task queue's write end
    too, would wait for work forever."""
    import ctypes
    import signal
    if sys.platform.startswith('linux'):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def _wait_for_the_others(_) -> float:
    """Run once per worker: the barrier holds each until all have started, so no worker can take
    two of these while another is still starting. -> its start-up's CPU time."""
    _all_started.wait()
    return time.process_time()


def start_pool(tok, n: int):
    """-> (a spawn pool of n tokenizing processes, every one started and idle; their start-up's CPU
    seconds). Spawn: a forked child of a process that already ran Rust threads (BPE training) can
    hang."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    spawn = multiprocessing.get_context('spawn')
    pool = ProcessPoolExecutor(n, mp_context=spawn, initializer=_start_worker,
                               initargs=(tok, spawn.Barrier(n), os.getpid()))
    return pool, sum(pool.map(_wait_for_the_others, range(n)))


def _tokenize_in_worker(texts, first_document, val_every, dtype) -> dict:
    return tokenize_piece(_worker_tokenizer, texts, first_document, val_every, dtype)


class Workers:
    """A spawn pool of `n` tokenizing processes, all started on entry (so the tokenizing rate does
    not count their start-up). After exit, `cpu` is the CPU time they spent after starting: their
    pieces, pickling included. n == 1: no pool, pieces are tokenized in this process."""

    def __init__(self, tok, n: int):
        self.tok, self.n, self.pool, self.cpu = tok, n, None, 0.0

    def __enter__(self) -> 'Workers':
        if self.n == 1:
            os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # one thread: the baseline the pool is measured against
            return self
        self.reaped_cpu = _children_cpu()
        self.pool, self.startup_cpu = start_pool(self.tok, self.n)
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.cpu = _children_cpu() - self.reaped_cpu - self.startup_cpu

    def tokenized(self, pieces: Iterator[Piece], val_every: int, dtype: str):
        """(piece, tokenize_piece's result) in piece order; at most 2 * n pieces in flight, so
        memory stays bounded however long the stream."""
        if self.pool is None:
            for piece in pieces:
                yield piece, tokenize_piece(self.tok, piece.texts, piece.first_document, val_every, dtype)
            return
        in_flight: deque = deque()
        for piece in pieces:
            in_flight.append((piece, self.pool.submit(_tokenize_in_worker, piece.texts, piece.first_document,
                                                      val_every, dtype)))
            if len(in_flight) >= 2 * self.n:
                done, future = in_flight.popleft()
                yield done, future.result()
        while in_flight:
            done, future = in_flight.popleft()
            yield done, future.result()


def _children_cpu() -> float:
    """User + system CPU time of this process's reaped children."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- windows and shards: written by this process, piece by piece, in order --------------------

def cut_windows(stream: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (the full windows, the rest). Windows overlap by one token; the rest keeps the last
    token of the last window: it is the first input of the next one."""
    stride = window - 1
    n = max(0, (len(stream) - 1) // stride)
    if n == 0:
        return np.zeros((0, window), stream.dtype), stream
    windows = np.lib.stride_tricks.sliding_window_view(stream, window)[::stride][:n]
    return windows, stream[n * stride:]


def piece_name(index: int) -> str:
    return f'piece-{index:06d}'


def write_piece(work: Path, index: int, streams: dict, state: dict, window: int, dtype: str,
                final: bool = False) -> dict:
    """Append one piece's tokens to each split; write its full windows (with final: the padded
    last one too) as durable shards; -> the state after it, ready to be recorded."""
    state = json.loads(json.dumps(state))  # the recorded state stays as it was until we are done
    written = []
    for split in SPLITS:
        tokens, documents, n_bytes = streams[split]
        stream = np.concatenate([np.asarray(state['carry'][split], dtype=dtype), tokens])
        windows, rest = cut_windows(stream, window)
        if final and len(rest) > 1:
            windows = np.full((1, window), state['eos_id'], dtype=dtype)
            windows[0, :len(rest)] = rest
            rest = rest[:0]
        counts = state['splits'][split]
        counts['documents'] += documents
        counts['tokens'] += len(tokens)
        counts['bytes'] += n_bytes
        counts['windows'] += len(windows)
        state['carry'][split] = rest.tolist()
        if len(windows):
            tmp = work / split / f'{piece_name(index)}.tmp'
            counts['shards'] += write_shards(tmp, windows, SHARD_SIZE_LIMIT)
            written.append(tmp)
        if split == 'train' and os.environ.get(HOLD_ENV) == str(index):
            print(f'holding in piece {index} ({HOLD_ENV})', file=sys.stderr, flush=True)
            time.sleep(3600)
    for tmp in written:
        make_durable(tmp, tmp.with_name(piece_name(index)))
    state['pieces'] = index + 1
    return state


def make_durable(tmp: Path, final: Path) -> None:
    """fsync a directory's files and the directory, then rename it to `final`."""
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    tmp.rename(final)
    _fsync(final.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def merge_index(split_dir: Path) -> None:
    """One index.json over the pieces' shards, in piece order (what StreamingDataset reads)."""
    split_dir.mkdir(exist_ok=True)
    shards = []
    for piece in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        for shard in json.loads((piece / 'index.json').read_text())['shards']:
            for key in ('raw_data', 'zip_data'):
                if shard.get(key):
                    shard[key]['basename'] = f'{piece.name}/{shard[key]["basename"]}'
            shards.append(shard)
    (split_dir / 'index.json').write_text(json.dumps({'version': 2, 'shards': shards}, sort_keys=True))


# --- the journal: what a resumed preparation continues from ------------------------------------

class Journal:
    """pieces.jsonl: line 1 {"command": ..., "tokenizer": ...}, then the state after each piece.
    Each line is fsynced before the next piece counts as done; a torn last line (killed while
    appending) is dropped."""

    def __init__(self, work: Path):
        self.path = work / JOURNAL_FILE

    def read(self) -> tuple[Optional[dict], Optional[dict]]:
        """-> (the header, the last state), or (None, None) for a fresh start."""
        if not self.path.is_file():
            return None, None
        lines, good = [], 0
        with self.path.open('rb') as f:
            for raw in f:
                try:
                    if not raw.endswith(b'\n'):
                        raise ValueError('torn line')
                    lines.append(json.loads(raw))
                except ValueError:
                    break
                good += len(raw)
        os.truncate(self.path, good)
        if not lines:
            return None, None
        return lines[0], (lines[-1] if len(lines) > 1 else None)

    def start(self, header: dict) -> None:
        self.path.write_text('')
        self.append(header)

    def append(self, record: dict) -> None:
        with self.path.open('a') as f:
            f.write(json.dumps(record, sort_keys=True) + '\n')
            f.flush()
            os.fsync(f.fileno())


def fresh_state(eos_id: int) -> dict:
    return {'pieces': 0, 'documents': 0, 'position': None, 'eos_id': eos_id, 'final': False,
            'carry': {s: [] for s in SPLITS},
            'splits': {s: {'documents': 0, 'tokens': 0, 'windows': 0, 'bytes': 0, 'shards': 0} for s in SPLITS}}


def differences(recorded: dict, wanted: dict) -> str:
    keys = sorted(set(recorded) | set(wanted))
    return '; '.join(f'{k}: {_short(recorded.get(k))} there, {_short(wanted.get(k))} now'
                     for k in keys if recorded.get(k) != wanted.get(k))


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + '...'


# --- the work directory and the finished dataset -----------------------------------------------

def _check_out(out: Path, force: bool) -> None:
    if is_finished_dataset(out) and not force:
        raise BadInput(f'--out {out}: a finished dataset is already there; '
                       f'pass --force to replace it, or choose another --out')
    if out.exists() and not out.is_dir():
        raise BadInput(f'--out {out}: exists and is not a directory')
    if out.is_dir() and any(out.iterdir()) and not is_finished_dataset(out):
        raise BadInput(f'--out {out}: directory is not empty and is not a dataset; '
                       f'choose an empty or new directory')


def work_dir(out: Path) -> Path:
    return out.with_name(f'.{out.name}.partial')


@contextmanager
def locked(work: Path, out: Path):
    """Only one preparation at a time in `work` (flock; where the filesystem has none, no guard)."""
    work.mkdir(parents=True, exist_ok=True)
    fd = os.open(work, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInput(f'--out {out}: another preparation is writing it now (it holds {work})') from None
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


def _empty(work: Path) -> None:
    for child in work.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _forget_unrecorded(work: Path, pieces: int) -> None:
    """Shards a killed preparation wrote after its last recorded piece (and a completion marker
    it did not finish writing)."""
    (work / MARKER_TMP).unlink(missing_ok=True)
    for split in SPLITS:
        for d in (work / split).glob('piece-*'):
            if d.suffix == '.tmp' or int(d.name.split('-')[1]) >= pieces:
                shutil.rmtree(d)


def _progress(total: Optional[int], done: int):
    from tqdm import tqdm
    return tqdm(total=total, initial=done, unit='doc', desc='tokenizing', file=sys.stderr,
                mininterval=1.0, dynamic_ncols=True, disable=None)  # None: only on a terminal


def prepare(sources: list[str], out: Path, tokenizer: str = 'bytes', seq_len: int = DEFAULT_SEQ_LEN,
            val_fraction: float = DEFAULT_VAL_FRACTION, force: bool = False,
            max_documents: Optional[int] = None, text_field: str = 'text',
            hf_config: Optional[str] = None, hf_split: str = 'train', quiet: bool = False,
            workers: Optional[int] = None, piece_chars: int = DEFAULT_PIECE_CHARS, source=None) -> dict:
    """Prepare (or resume preparing) a dataset at `out`; returns its dataset.json contents.
    Raises BadInput. `source`: an already opened trainer.corpus source (tests)."""
    from trainer.corpus import open_source
    from trainer.tokenizer import describe

    out = Path(out).absolute()
    if seq_len < 1:
        raise BadInput(f'--seq-len {seq_len}: must be a positive number of tokens')
    if not 0 < val_fraction <= 0.5:
        raise BadInput(f'--val-fraction {val_fraction}: allowed range is (0, 0.5]')
    if max_documents is not None and max_documents < 1:
        raise BadInput(f'--max-documents {max_documents}: must be at least 1')
    if piece_chars < 1:
        raise BadInput(f'--piece-chars {piece_chars}: must be a positive number of characters')
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise BadInput(f'--workers {workers}: must be at least 1 (default: the CPUs this process may use)')
    _check_out(out, force)
    source = source or open_source(sources, text_field, hf_config, hf_split)
    command = {'format': FORMAT_VERSION, **source.fingerprint, 'tokenizer': describe(tokenizer),
               'seq_len': seq_len, 'val_fraction': val_fraction, 'max_documents': max_documents,
               'piece_chars': piece_chars}
    work = work_dir(out)
    with parents_made_for(out), locked(work, out):
        journal = Journal(work)
        header, state = journal.read()
        if header is not None and header['command'] != command:
            if not force:
                raise BadInput(f'--out {out}: an unfinished preparation with other arguments is in {work} '
                               f'({differences(header["command"], command)}); run its command again to '
                               f'resume it, or add --force to start over')
            header = state = None
        if header is not None and is_finished_dataset(work):  # killed between marker and rename
            replace_directory(work, out)
            return read_dataset_info(out)
        try:
            info = _build(work, journal, header, state, source, command, tokenizer, workers, quiet)
        except BadInput:
            shutil.rmtree(work, ignore_errors=True)  # bad input: nothing of it is worth resuming
            raise
        except OSError:
            _keep_what_resumes(work)
            raise
        replace_directory(work, out)
    return info


def _keep_what_resumes(work: Path) -> None:
    """After a write failed (a full disk, a quota): the pieces the journal records stay, so that
    the same command continues from them once there is room; everything else goes, all of `work`
    when no piece is recorded."""
    _, state = Journal(work).read()
    if state is None or state['pieces'] == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        _forget_unrecorded(work, state['pieces'])


def recorded_pieces(out: Path) -> int:
    """How many pieces a preparation of `out` left recorded in its work directory."""
    work = work_dir(out)
    if not (work / JOURNAL_FILE).is_file():
        return 0
    _, state = Journal(work).read()
    return state['pieces'] if state else 0


def _build(work: Path, journal: Journal, header: Optional[dict], state: Optional[dict], source,
           command: dict, tokenizer: str, workers: int, quiet: bool) -> dict:
    from trainer.tokenizer import TOKENIZER_FILE, make_tokenizer

    started = time.time()
    if header is None:
        _empty(work)
        tok = make_tokenizer(tokenizer)
        file = tok.save(work)
        if file:
            _fsync(work / file)
        header = {'command': command,
                  'tokenizer': {'kind': tok.kind, 'vocab_size': tok.vocab_size, 'eos_id': tok.eos_id, 'file': file}}
        journal.start(header)
    else:
        tok = make_tokenizer(tokenizer, saved=work / TOKENIZER_FILE)
        tok.eos_id = header['tokenizer']['eos_id']  # as first chosen (a hub name's own eos_token)
    state = state or fresh_state(tok.eos_id)
    resumed_at = state['pieces']
    _forget_unrecorded(work, state['pieces'])
    seq_len = command['seq_len']
    dtype = shard_dtype(tok)
    tokens_before = sum(s['tokens'] for s in state['splits'].values())
    seconds = main_cpu = workers_cpu = 0.0
    if not state['final']:
        with Workers(tok, workers) as pool:
            started_at, main_started = time.time(), time.process_time()  # after all start-up
            state = _write_pieces(work, journal, state, source, command, tok, pool, quiet)
            seconds, main_cpu = time.time() - started_at, time.process_time() - main_started
        workers_cpu = pool.cpu
        if state['documents'] == 0:
            raise BadInput(f'--source {source.named}: the corpus is empty (no non-empty documents)')
        nothing = {s: (np.zeros(0, dtype), 0, 0) for s in SPLITS}
        state = write_piece(work, state['pieces'], nothing, state, seq_len + 1, dtype, final=True)
        state['final'] = True
        journal.append(state)
    splits = state['splits']
    if splits['train']['windows'] == 0:
        raise BadInput(f'--source {source.named}: only {state["documents"]} document(s); need at '
                       f'least 2 (one goes to the validation split)')
    for split in SPLITS:
        merge_index(work / split)
    total_tokens = sum(s['tokens'] for s in splits.values())
    info = {
        'format': FORMAT_VERSION,
        'source': source.description,
        'tokenizer': header['tokenizer'],
        'seq_len': seq_len,
        'window': seq_len + 1,
        # UTF-8 bytes per stored token (end-of-text included): turns nats/token into bits/byte.
        'bytes_per_token': sum(s['bytes'] for s in splits.values()) / total_tokens,
        'val_fraction': command['val_fraction'],
        'splits': splits,
        'pieces': state['pieces'],
        'command': command,
        # This run's own: how it was made, not what it holds.
        'workers': workers,
        'resumed_at_piece': resumed_at,
        'tokens_this_run': total_tokens - tokens_before,
        'seconds': round(time.time() - started, 3),
        # Tokenizing and writing: wall time; CPU time of this process and its workers after their
        # start-up (per token it does not depend on other people's load); of this process alone
        'tokenize_seconds': round(seconds, 3),
        'tokenize_cpu_seconds': round(main_cpu + workers_cpu, 3),
        'tokenize_main_cpu_seconds': round(main_cpu, 3),
        'created_at': time.time(),
    }
    # The completion marker, whole or not at all (a full disk must not leave half of one).
    (work / MARKER_TMP).write_text(json.dumps(info, indent=1) + '\n')
    _fsync(work / MARKER_TMP)
    (work / MARKER_TMP).rename(work / DATASET_FILE)
    _fsync(work)
    return info


def _write_pieces(work: Path, journal: Journal, state: dict, source, command: dict, tok,
                  pool: Workers, quiet: bool) -> dict:
    """Tokenize and write every piece from the recorded state on; -> the state after the last."""
    dtype = shard_dtype(tok)
    val_every = max(1, round(1 / command['val_fraction']))
    pieces = cut_pieces(source, state['position'], state['pieces'], state['documents'],
                        command['piece_chars'], command['max_documents'])
    total = source.total if command['max_documents'] is None else command['max_documents']
    bar = None
    for piece, streams in pool.tokenized(pieces, val_every, dtype):
        if bar is None and not quiet:
            bar = _progress(total, state['documents'])  # only once there is text: an empty corpus is one error line
        state = write_piece(work, piece.index, streams, state, command['seq_len'] + 1, dtype)
        state['documents'] += len(piece.texts)
        state['position'] = piece.position
        journal.append(state)
        if bar is not None:
            bar.update(len(piece.texts))
    if bar is not None:
        bar.close()
    return state


def shard_dtype(tok) -> str:
    return 'uint16' if tok.vocab_size <= 1 << 16 else 'uint32'


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
    rate = info.get('tokens_this_run', tokens) / max(info['tokenize_seconds'], 1e-9)
    resumed = f', resumed at piece {info["resumed_at_piece"]}' if info.get('resumed_at_piece') else ''
    return (f'prepared {out}: {docs} documents, {tokens} tokens ({info["tokenizer"]["kind"]}, '
            f'{info["bytes_per_token"]:.3f} bytes/token), {tr["windows"]} train + {va["windows"]} val '
            f'windows of {info["window"]} tokens in {tr["shards"] + va["shards"]} shards, '
            f'{info["seconds"]:.1f} s in all ({rate:,.0f} tokens/s tokenizing and writing, '
            f'{info.get("workers", 1)} workers{resumed})')


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='python -m trainer.prepare', description=__doc__.split('\n\n')[0])
    p.add_argument('--source', nargs='+', required=True,
                   help='builtin | a Hugging Face dataset name | text/jsonl/parquet files or directories')
    p.add_argument('--tokenizer', default=None,
                   help='bytes | bpe-builtin | gpt2 | PATH/gpt2.tiktoken | PATH/tokenizer.json | a Hugging Face '
                        'tokenizer name or directory (default: bytes for builtin, gpt2 otherwise)')
    p.add_argument('--out', default=None,
                   help='output directory (default: $SLMJOBS_DATA_ROOT/builtin or ./data/builtin for builtin)')
    p.add_argument('--seq-len', type=int, default=DEFAULT_SEQ_LEN, help='tokens per training sequence')
    p.add_argument('--val-fraction', type=float, default=DEFAULT_VAL_FRACTION)
    p.add_argument('--max-documents', type=int, default=None, help='stop after this many documents')
    p.add_argument('--text-field', default='text', help='the text column of jsonl/parquet/hub records')
    p.add_argument('--hf-config', default=None, help='hub dataset configuration (e.g. sample-10BT)')
    p.add_argument('--hf-split', default='train')
    p.add_argument('--workers', type=int, default=None,
                   help='tokenizing processes (default: the CPUs this process may use, at most $SLMJOBS_CPUS)')
    p.add_argument('--piece-chars', type=int, default=DEFAULT_PIECE_CHARS,
                   help='characters of text per piece, the unit of parallel work and of resuming')
    p.add_argument('--force', action='store_true',
                   help='replace a finished dataset at --out, or discard an unfinished one with other arguments')
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
                       hf_config=args.hf_config, hf_split=args.hf_split, workers=args.workers,
                       piece_chars=args.piece_chars)
    except BadInput as e:
        print(f'error: {e}', file=sys.stderr)
        return e.exit_code
    except OSError as e:
        failure = filesystem_failure(e, out)
        if failure is None:
            raise
        status, line = failure
        kept = recorded_pieces(out) if status == EXIT_DISK_FULL else 0
        if kept:
            line += f' (it continues after the {kept} piece(s) kept in {work_dir(out)})'
        print(f'error: {line}', file=sys.stderr)
        return status
    print(summary(out, info))
    return 0


if __name__ == '__main__':
    sys.exit(main())
