"""Data preparation: windows, split, tokenizers, identical output for any number of workers,
bad input. (Kills and resuming: test_prepare_kill.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.corpus import builtin_documents
from trainer.prepare import prepare
from trainer.tokenizer import GPT2_VOCAB, gpt2_to_hf, make_tokenizer


def read_windows(split_dir) -> list[np.ndarray]:
    from streaming import StreamingDataset
    ds = StreamingDataset(local=str(split_dir), remote=None, shuffle=False, batch_size=1)
    return [ds[i]['tokens'] for i in range(ds.num_samples)]


def test_windows_keep_every_token_once_as_a_target(tmp_path):
    docs = [f'doc {i}: ' + 'abc' * (i + 3) for i in range(7)]
    src = tmp_path / 'docs.jsonl'
    src.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs))
    info = prepare([str(src)], tmp_path / 'ds', tokenizer='bytes', seq_len=8, val_fraction=0.25, quiet=True)

    assert info['tokenizer'] == {'kind': 'bytes', 'vocab_size': 257, 'eos_id': 256, 'file': None}
    assert info['window'] == 9
    train_docs = [d for i, d in enumerate(docs) if i % 4 != 0]  # every 4th document is validation
    stream = np.concatenate([np.append(np.frombuffer(d.encode(), np.uint8), 256) for d in train_docs])
    windows = read_windows(tmp_path / 'ds' / 'train')
    assert all(len(w) == 9 for w in windows)
    targets = np.concatenate([w[1:] for w in windows])  # what the model is trained to predict
    assert np.array_equal(targets[:len(stream) - 1], stream[1:])  # nothing thrown away
    assert np.all(targets[len(stream) - 1:] == 256)  # only end-of-text padding after it
    assert info['splits']['val']['documents'] == 2
    total_bytes = sum(len(d.encode()) for d in docs)
    assert info['bytes_per_token'] == total_bytes / (total_bytes + len(docs))


def test_builtin_bpe_tokenizer_is_offline_and_saved(tmp_path):
    info = prepare(['builtin'], tmp_path / 'bpe', tokenizer='bpe-builtin', seq_len=64, max_documents=20, quiet=True)
    assert info['tokenizer']['kind'] == 'bpe-builtin' and info['tokenizer']['vocab_size'] == 4096
    assert 2.0 < info['bytes_per_token'] < 6.0
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tmp_path / 'bpe' / 'tokenizer.json'))
    assert tok.decode(tok.encode('def main(): return 0').ids) == 'def main(): return 0'


# --- parallel, tokenizers, bad input (issue 13) ------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
RUN_FIELDS = ('workers', 'resumed_at_piece', 'tokens_this_run', 'seconds', 'tokenize_seconds',
              'tokenize_cpu_seconds', 'tokenize_main_cpu_seconds', 'created_at')


def corpus_jsonl(path: Path, documents: int = 120) -> Path:
    """The first documents of the built-in corpus (~2 MB for 120) as JSONL."""
    with path.open('w') as f:
        for _, text in zip(range(documents), builtin_documents()):
            f.write(json.dumps({'text': text}) + '\n')
    return path


def dataset_files(out: Path) -> dict:
    """Every file's bytes; dataset.json without the fields that describe the run, not the data."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob('*')) if p.is_file()}
    info = json.loads(files.pop('dataset.json'))
    for field in RUN_FIELDS:
        info.pop(field)
    files['dataset.json'] = info
    return files


def run_prepare(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, '-m', 'trainer.prepare', *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=300)


def test_one_and_two_workers_write_identical_datasets(tmp_path):
    src = corpus_jsonl(tmp_path / 'docs.jsonl')
    one = prepare([str(src)], tmp_path / 'one', seq_len=64, workers=1, piece_chars=100_000, quiet=True)
    two = prepare([str(src)], tmp_path / 'two', seq_len=64, workers=2, piece_chars=100_000, quiet=True)
    assert one['pieces'] > 10 and one['workers'] == 1 and two['workers'] == 2
    assert dataset_files(tmp_path / 'one') == dataset_files(tmp_path / 'two')
    windows = read_windows(tmp_path / 'two' / 'train')  # the merged index reads as one dataset
    assert len(windows) == two['splits']['train']['windows']
    docs = [json.loads(line)['text'] for line in src.read_text().splitlines()]
    train = [d for i, d in enumerate(docs) if i % 100 != 0]
    stream = np.concatenate([np.append(np.frombuffer(d.encode(), np.uint8), 256) for d in train])
    targets = np.concatenate([w[1:] for w in windows])
    assert np.array_equal(targets[:len(stream) - 1], stream[1:])  # piece boundaries lose nothing


def test_the_pool_starts_every_worker_before_the_first_piece():
    """The tokenizing clock starts when start_pool returns: by then each of the n processes has
    run its initializer and taken exactly one start-up task (a barrier holds them), so none is
    still importing while the other takes the first pieces."""
    from trainer.prepare import _wait_for_the_others, start_pool
    pool, startup_cpu = start_pool(make_tokenizer('bytes'), 3)
    with pool:
        assert startup_cpu > 0
        assert len(pool._processes) == 3 and all(p.is_alive() for p in pool._processes.values())
        # The barrier again: it passes only when three distinct idle workers each take one task.
        assert len(list(pool.map(_wait_for_the_others, range(3), timeout=60))) == 3


def test_default_workers_is_the_affinity_capped_by_slmjobs_cpus(tmp_path):
    src = corpus_jsonl(tmp_path / 'docs.jsonl', documents=5)
    proc = run_prepare('--source', str(src), '--tokenizer', 'bytes', '--out', str(tmp_path / 'ds'),
                       env={'SLMJOBS_CPUS': '1'})
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / 'ds' / 'dataset.json').read_text())['workers'] == 1
    from trainer.prepare import default_workers
    assert default_workers() == min(len(os.sched_getaffinity(0)), int(os.environ.get('SLMJOBS_CPUS', 10**6)))


def test_gpt2_is_offline_from_the_local_vocabulary_with_known_encodings():
    tok = make_tokenizer('gpt2')
    assert (tok.vocab_size, tok.eos_id) == (50257, 50256)
    known = {'Hello world': [15496, 995], 'hello world': [31373, 995], ' the': [262],
             'The quick brown fox jumps over the lazy dog.':
                 [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]}
    assert [ids.tolist() for ids in tok.encode(list(known))] == list(known.values())
    assert make_tokenizer(str(GPT2_VOCAB)).encode(['Hello world'])[0].tolist() == [15496, 995]


def test_gpt2_tokenizer_json_encodes_exactly_as_tiktoken():
    docs = [d for _, d in zip(range(150), builtin_documents())]  # prose and code, ~1M tokens
    tiktoken_ids = make_tokenizer('gpt2').encode(docs)
    hf = gpt2_to_hf(GPT2_VOCAB)
    hf_ids = [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)]
    assert all(a.tolist() == b for a, b in zip(tiktoken_ids, hf_ids))
    assert hf.decode(hf_ids[100]) == docs[100]
    assert hf.token_to_id('<|endoftext|>') == 50256


def test_tokenizer_json_path_and_hf_directory_give_the_gpt2_dataset(tmp_path):
    src = corpus_jsonl(tmp_path / 'docs.jsonl', documents=30)
    gpt2 = prepare([str(src)], tmp_path / 'gpt2', tokenizer='gpt2', seq_len=64, workers=1, quiet=True)
    assert gpt2['tokenizer'] == {'kind': 'gpt2', 'vocab_size': 50257, 'eos_id': 50256, 'file': 'tokenizer.json'}
    saved = tmp_path / 'gpt2' / 'tokenizer.json'
    from_file = prepare([str(src)], tmp_path / 'file', tokenizer=str(saved), seq_len=64, workers=2, quiet=True)
    from transformers import PreTrainedTokenizerFast
    PreTrainedTokenizerFast(tokenizer_file=str(saved), eos_token='<|endoftext|>').save_pretrained(tmp_path / 'hf-dir')
    from_dir = prepare([str(src)], tmp_path / 'dir', tokenizer=str(tmp_path / 'hf-dir'), seq_len=64, quiet=True)
    assert from_file['tokenizer']['kind'] == from_dir['tokenizer']['kind'] == 'hf'
    for other in ('file', 'dir'):
        for split in ('train', 'val'):
            assert read_windows_all(tmp_path / other / split) == read_windows_all(tmp_path / 'gpt2' / split)
        assert (tmp_path / other / 'tokenizer.json').is_file()


def read_windows_all(split_dir) -> list[list[int]]:
    return [w.tolist() for w in read_windows(split_dir)]


def test_bytes_dataset_records_that_it_decodes_without_a_file(tmp_path):
    src = corpus_jsonl(tmp_path / 'docs.jsonl', documents=5)
    info = prepare([str(src)], tmp_path / 'ds', quiet=True)
    assert info['tokenizer']['file'] is None and not (tmp_path / 'ds' / 'tokenizer.json').exists()


def assert_refused(proc: subprocess.CompletedProcess, tmp_path: Path, *needles: str) -> None:
    """One line, exit 2, and nothing that looks like (or could be taken for) a dataset."""
    assert proc.returncode == 2, f'exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}'
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / 'ds').exists()
    assert not list(tmp_path.glob('.ds*')), list(tmp_path.glob('.ds*'))


def test_a_jsonl_line_without_the_text_field_is_named_by_file_and_line(tmp_path):
    src = tmp_path / 'docs.jsonl'
    src.write_text('{"text": "one"}\n\n{"text": "two"}\n{"body": "three"}\n')
    proc = run_prepare('--source', str(src), '--tokenizer', 'bytes', '--out', str(tmp_path / 'ds'))
    assert_refused(proc, tmp_path, f'{src}: line 4', "'text'", '--text-field')


def test_a_file_that_cannot_be_read_is_refused_after_pieces_were_written(tmp_path):
    corpus = tmp_path / 'corpus'
    corpus.mkdir()
    corpus_jsonl(corpus / 'a.jsonl', documents=60)
    (corpus / 'b.txt').symlink_to('/proc/self/mem')  # a regular file whose read fails (EIO), even for root
    proc = run_prepare('--source', str(corpus), '--tokenizer', 'bytes', '--out', str(tmp_path / 'ds'),
                       '--piece-chars', '100000')
    assert_refused(proc, tmp_path, str(corpus / 'b.txt'), 'cannot read')


@pytest.mark.parametrize('content, needle', [
    (b'plain text first\n' + bytes(range(0, 256)), 'not a text file (a NUL byte at offset 17)'),
    ('caf\u00e9 au lait'.encode('latin-1'), 'not UTF-8 text (byte 0xe9 at offset 3)'),
])
def test_a_file_that_is_not_text_is_refused_naming_the_byte(tmp_path, content, needle):
    """A binary file named .txt after a good file: refused once the preparation reaches it,
    naming it and the offset; the pieces written before it, the work directory and the
    directories above --out that the preparation made are gone, the one that existed stays."""
    corpus = tmp_path / 'corpus'
    corpus.mkdir()
    corpus_jsonl(corpus / 'a.jsonl', documents=60)
    (corpus / 'b.txt').write_bytes(content)
    existing = tmp_path / 'existing'
    existing.mkdir()
    out = existing / 'made' / 'by-it' / 'ds'
    proc = run_prepare('--source', str(corpus), '--tokenizer', 'bytes', '--out', str(out),
                       '--piece-chars', '100000')
    assert_refused(proc, tmp_path, f'--source {corpus / "b.txt"}: {needle}', 'allowed: UTF-8 text')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['corpus', 'existing']
    assert list(existing.iterdir()) == []


@pytest.mark.parametrize('content', ['', '\n\n', '{"text": ""}\n'])
def test_an_empty_source_is_refused(tmp_path, content):
    src = tmp_path / 'docs.jsonl'
    src.write_text(content)
    proc = run_prepare('--source', str(src), '--tokenizer', 'bytes', '--out', str(tmp_path / 'ds'))
    assert_refused(proc, tmp_path, 'empty')


@pytest.mark.parametrize('content', ['not json', '{"model": {}}'])
def test_a_tokenizer_file_that_does_not_load_is_refused(tmp_path, content):
    src = corpus_jsonl(tmp_path / 'docs.jsonl', documents=3)
    bad = tmp_path / 'tokenizer.json'
    bad.write_text(content)
    proc = run_prepare('--source', str(src), '--tokenizer', str(bad), '--out', str(tmp_path / 'ds'))
    assert_refused(proc, tmp_path, str(bad), 'does not load')


@pytest.mark.parametrize('args, env, needle', [
    (['--workers', '0'], {}, '--workers 0'),
    (['--workers', '-3'], {}, '--workers -3'),
    ([], {'SLMJOBS_CPUS': 'all'}, "SLMJOBS_CPUS='all'"),
    (['--tokenizer', 'no-such-tokenizer'], {}, "'no-such-tokenizer'"),
    (['--tokenizer', str(Path(__file__))], {}, 'does not load'),
])
def test_bad_settings_are_refused(tmp_path, args, env, needle):
    src = corpus_jsonl(tmp_path / 'docs.jsonl', documents=3)
    proc = run_prepare('--source', str(src), '--tokenizer', 'bytes', '--out', str(tmp_path / 'ds'), *args, env=env)
    assert_refused(proc, tmp_path, needle)
