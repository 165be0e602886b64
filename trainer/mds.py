"""MDS shards of fixed-size token windows, written with numpy in one pass per shard.

Byte for byte what `streaming.MDSWriter(columns={'tokens': 'ndarray:<dtype>'}, size_limit=...)`
writes for the same windows (tests/trainer/test_mds.py checks it), without its per-sample Python
encoding (~26 us a window, the preparing process's main cost) or its ~5 s of imports. Uncompressed,
no hashes. A shard: [samples: uint32] [offsets: uint32 * (samples + 1)] [config JSON] [samples],
a sample: [its column's size: uint32] [ndim << 2 | shape dtype: 1 byte] [shape] [the ids].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_SHAPE_DTYPES = ((1 << 8, 'uint8', 0), (1 << 16, 'uint16', 1), (1 << 32, 'uint32', 2))


def shard_config(dtype: str, size_limit: int) -> dict:
    return {'version': 2, 'format': 'mds', 'compression': None, 'hashes': [], 'size_limit': size_limit,
            'column_names': ['tokens'], 'column_encodings': [f'ndarray:{dtype}'], 'column_sizes': [None]}


def shape_header(window: int) -> bytes:
    """The encoded shape of a 1-d array of `window` values: ndim and the smallest uint for it."""
    _, shape_dtype, code = next(d for d in _SHAPE_DTYPES if window < d[0])
    return bytes([(1 << 2) | code]) + np.array([window], shape_dtype).tobytes()


def encode_samples(windows: np.ndarray) -> np.ndarray:
    """-> one row of bytes per window: the complete MDS sample."""
    n, window = windows.shape
    shape = shape_header(window)
    body = len(shape) + window * windows.dtype.itemsize
    head = np.frombuffer(np.array([body], '<u4').tobytes() + shape, np.uint8)
    rows = np.empty((n, len(head) + window * windows.dtype.itemsize), np.uint8)
    rows[:, :len(head)] = head
    rows[:, len(head):] = windows.astype(windows.dtype.newbyteorder('<'), copy=False).view(np.uint8).reshape(n, -1)
    return rows


def write_shards(out: Path, windows: np.ndarray, size_limit: int) -> int:
    """Write `windows` (n x window, uint16 or uint32) as MDS shards and index.json into `out`
    (created); -> how many shards. Shards fill up as MDSWriter fills them."""
    out.mkdir(parents=True)
    dtype = windows.dtype.name
    config = shard_config(dtype, size_limit)
    config_data = json.dumps(config, sort_keys=True).encode('utf-8')
    rows = encode_samples(np.ascontiguousarray(windows))
    per_shard = max(1, (size_limit - 8 - len(config_data)) // (rows.shape[1] + 4))
    shards = []
    for first in range(0, len(rows), per_shard):
        part = rows[first:first + per_shard]
        basename = f'shard.{len(shards):05}.mds'
        n = len(part)
        offsets = np.arange(n + 1, dtype=np.int64) * part.shape[1] + 4 + 4 * (n + 1) + len(config_data)
        data = np.uint32(n).tobytes() + offsets.astype('<u4').tobytes() + config_data + part.tobytes()
        (out / basename).write_bytes(data)
        shards.append({'samples': n, 'raw_data': {'basename': basename, 'bytes': len(data), 'hashes': {}},
                       'zip_data': None, **config})
    with open(out / 'index.json', 'w') as f:
        json.dump({'version': 2, 'shards': shards}, f, sort_keys=True)
    return len(shards)
