"""Two trainers starting on one node at once: streaming looks for a free /dev/shm prefix, then
creates it, so both could pick the same one and the second would die with FileExistsError (seen
in CI with four test workers side by side). The node-wide lock makes looking and creating one step.
Held for real here, by this test, the way another trainer would hold it."""

from __future__ import annotations

import fcntl
import os

from support import wait_until
from trainer.data import PREFIX_LOCK


def test_a_trainer_registers_its_shared_memory_only_while_no_other_one_does(worker, tmp_path):
    shm_file = tmp_path / 'shm-prefixes'  # the trainer lists each prefix it registers here
    lock = os.open(PREFIX_LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run = worker.start('lockwait', env={'SLMJOBS_SHM_FILE': shm_file})
        wait_until(lambda: f'waiting for {PREFIX_LOCK}' in run.output() or run.proc.poll() is not None,
                   timeout=300, what='the trainer to wait for the lock')
        assert run.proc.poll() is None, run.output()[-3000:]
        assert not shm_file.exists()  # nothing registered while another trainer holds the lock
    finally:
        os.close(lock)  # releases it
    assert run.wait() == 0, run.output()[-3000:]
    assert shm_file.read_text().split()
