"""Data preparation: windows, split, tokenizer description."""

from __future__ import annotations

import json

import numpy as np

from trainer.prepare import prepare


def read_windows(split_dir) -> list[np.ndarray]:
    from streaming import StreamingDataset
    ds = StreamingDataset(local=str(split_dir), remote=None, shuffle=False, batch_size=1)
    return [ds[i]['tokens'] for i in range(ds.num_samples)]


def test_windows_keep_every_token_once_as_a_target(tmp_path):
    docs = [f'doc {i}: ' + 'abc' * (i + 3) for i in range(7)]
    src = tmp_path / 'docs.jsonl'
    src.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs))
    info = prepare([str(src)], tmp_path / 'ds', tokenizer='bytes', seq_len=8, val_fraction=0.25, quiet=True)

    assert info['tokenizer'] == {'kind': 'bytes', 'vocab_size': 257, 'eos_id': 256}
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
