"""trainer.mds writes exactly what streaming's MDSWriter writes, and StreamingDataset reads it."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.mds import write_shards


@pytest.mark.parametrize('dtype, window, n, size_limit', [
    ('uint16', 9, 1000, 4096),      # many shards, a 1-byte shape
    ('uint32', 300, 50, 1 << 14),   # a 2-byte shape, uint32 ids
    ('uint16', 257, 7, 1 << 26),    # one shard, the preparation's usual window
])
def test_shards_are_byte_identical_to_mdswriter(tmp_path, dtype, window, n, size_limit):
    from streaming import MDSWriter, StreamingDataset
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 50257, size=(n, window)).astype(dtype)
    writer = MDSWriter(out=str(tmp_path / 'theirs'), columns={'tokens': f'ndarray:{dtype}'},
                       size_limit=size_limit, progress_bar=False)
    for row in windows:
        writer.write({'tokens': row})
    writer.finish()
    shards = write_shards(tmp_path / 'ours', windows, size_limit)

    theirs = sorted(p.name for p in (tmp_path / 'theirs').iterdir())
    assert sorted(p.name for p in (tmp_path / 'ours').iterdir()) == theirs
    assert len(theirs) == shards + 1  # and index.json
    for name in theirs:
        assert (tmp_path / 'ours' / name).read_bytes() == (tmp_path / 'theirs' / name).read_bytes(), name
    ds = StreamingDataset(local=str(tmp_path / 'ours'), remote=None, shuffle=False, batch_size=1)
    assert np.array_equal(np.stack([ds[i]['tokens'] for i in range(ds.num_samples)]), windows)
