"""Reading prepared datasets with mosaicml-streaming (imported only when training starts).

StreamingDataset(local=<shards>, remote=None) reads the shards in place. Its position is part of
Composer's checkpoint (`dataset_state`), so a resumed run continues with the next sample: nothing
is replayed. `num_canonical_nodes` is fixed by the config (not derived from the world size) so the
sample order stays the same when the number of GPUs changes between links.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from streaming import StreamingDataLoader, StreamingDataset


class TokenWindows(StreamingDataset):
    """Samples are (seq_len + 1,) int64 tensors. Counts the samples it reads in this process
    (meaningful with num_workers=0), which is how the tests show that resuming deep into an
    epoch costs no more than resuming at its start."""

    samples_fetched = 0

    def __getitem__(self, index: int) -> torch.Tensor:
        self.samples_fetched += 1
        return torch.from_numpy(super().__getitem__(index)['tokens'].astype(np.int64))


def record_shm_prefix(dataset: StreamingDataset) -> None:
    """SLMJOBS_SHM_FILE: append this dataset's /dev/shm prefix so the job script can remove
    exactly its own blocks after a hard kill (streaming's own cleanup removes every prefix of
    the user, which can break another job on the node)."""
    shm_file = os.environ.get('SLMJOBS_SHM_FILE')
    prefix = getattr(dataset, '_shm_prefix_int', None)
    if shm_file and prefix is not None:
        with open(shm_file, 'a') as f:
            f.write(f'{prefix:06}\n')


def make_loader(split_dir: Path, per_device_batch: int, shuffle: bool, shuffle_seed: int,
                num_canonical_nodes: int, num_workers: int, drop_last: bool):
    dataset = TokenWindows(
        local=str(split_dir), remote=None, split=None, shuffle=shuffle, shuffle_seed=shuffle_seed,
        batch_size=per_device_batch, num_canonical_nodes=num_canonical_nodes)
    record_shm_prefix(dataset)
    loader = StreamingDataLoader(
        dataset, batch_size=per_device_batch, num_workers=num_workers, drop_last=drop_last,
        pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None)
    return dataset, loader


def tokens_in_batch(batch: torch.Tensor) -> int:
    """Target tokens: each stored window of seq_len + 1 tokens trains seq_len predictions."""
    return int(batch.shape[0] * (batch.shape[1] - 1))
