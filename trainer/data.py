"""Reading prepared datasets with mosaicml-streaming (imported only when training starts).

StreamingDataset(local=<shards>, remote=None) reads the shards in place. Its position is part of
Composer's checkpoint (`dataset_state`), so a resumed run continues with the next sample: nothing
is replayed. `num_canonical_nodes` is fixed by the config (not derived from the world size) so the
sample order stays the same when the number of GPUs changes between links.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

import numpy as np
import torch
from streaming import StreamingDataLoader, StreamingDataset

from trainer.progress import say


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


# Host-wide, like the shared memory it guards.
PREFIX_LOCK = '/dev/shm/slmjobs-streaming-prefix.lock'
PREFIX_LOCK_WAIT = 60.0  # seconds; then go on unlocked (streaming's own odds) rather than hang


@contextlib.contextmanager
def shm_prefix_lock():
    """Streaming picks its /dev/shm prefix by looking for the first free one and creating it
    later: two trainers starting on one node at once can pick the same one, and the second dies
    with FileExistsError (seen with four test workers starting trainers side by side). The
    node's local leader holds this lock from before its ranks look until the prefix is created
    (the dataset's constructor); the other ranks start looking only once it holds it. A holder
    that hangs (a rank died in its constructor) delays the others by PREFIX_LOCK_WAIT at most."""
    from composer.utils import dist
    fd = None
    if dist.get_local_rank() == 0:
        fd = acquire_prefix_lock()
    dist.barrier()
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def acquire_prefix_lock() -> int | None:
    try:
        # Read-only is enough for flock, so another user's lock file (0644) serves too.
        fd = os.open(PREFIX_LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        return None  # no /dev/shm here, or a lock file we may not read
    give_up = time.monotonic() + PREFIX_LOCK_WAIT
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > give_up:
                os.close(fd)
                say(f'{PREFIX_LOCK} still held after {PREFIX_LOCK_WAIT:.0f} s: going on without it')
                return None
            if not said:
                say(f'waiting for {PREFIX_LOCK}: another trainer on this node is registering '
                    f'its shared memory')
                said = True
            time.sleep(0.1)


def make_loader(split_dir: Path, per_device_batch: int, shuffle: bool, shuffle_seed: int,
                num_canonical_nodes: int, num_workers: int, drop_last: bool):
    with shm_prefix_lock():
        dataset = TokenWindows(
            local=str(split_dir), remote=None, split=None, shuffle=shuffle,
            shuffle_seed=shuffle_seed, batch_size=per_device_batch,
            num_canonical_nodes=num_canonical_nodes)
    record_shm_prefix(dataset)
    loader = StreamingDataLoader(
        dataset, batch_size=per_device_batch, num_workers=num_workers, drop_last=drop_last,
        pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None)
    return dataset, loader


def tokens_in_batch(batch: torch.Tensor) -> int:
    """Target tokens: each stored window of seq_len + 1 tokens trains seq_len predictions."""
    return int(batch.shape[0] * (batch.shape[1] - 1))
