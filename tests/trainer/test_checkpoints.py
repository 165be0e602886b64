"""trainer.checkpoints.newest_intact on a real run's checkpoints, damaged for real."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from trainer.checkpoints import newest_intact


def copy_checkpoints(reference: Path, dest: Path, *steps: int, latest: int) -> Path:
    dest.mkdir()
    for step in steps:
        shutil.copyfile(reference / 'checkpoints' / f'ep0-ba{step}-rank0.pt', dest / f'ep0-ba{step}-rank0.pt')
    os.symlink(f'ep0-ba{latest}-rank0.pt', dest / 'latest-rank0.pt')
    return dest


def test_latest_when_it_loads(reference, tmp_path):
    folder = copy_checkpoints(reference, tmp_path / 'c', 16, 20, 24, latest=20)  # 24: newer, not latest
    assert newest_intact(folder) == (folder / 'ep0-ba20-rank0.pt', 20, [])


def test_a_truncated_latest_falls_back_to_the_next_newest(reference, tmp_path):
    folder = copy_checkpoints(reference, tmp_path / 'c', 16, 20, 24, latest=24)
    for step, size in ((24, 4096), (20, 200_000)):  # cut in the header, and in the middle
        os.truncate(folder / f'ep0-ba{step}-rank0.pt', size)
    path, step, skipped = newest_intact(folder)
    assert (path, step) == (folder / 'ep0-ba16-rank0.pt', 16)
    assert [p.name for p, _ in skipped] == ['ep0-ba24-rank0.pt', 'ep0-ba20-rank0.pt']
    assert all(why.startswith('damaged') for _, why in skipped), skipped


def test_latest_pointing_at_a_missing_file(reference, tmp_path):
    folder = copy_checkpoints(reference, tmp_path / 'c', 8, latest=12)
    path, step, skipped = newest_intact(folder)
    assert (path, step) == (folder / 'ep0-ba8-rank0.pt', 8)
    assert skipped == [(folder / 'ep0-ba12-rank0.pt', 'missing')]


def test_nothing_to_find(tmp_path):
    (tmp_path / 'empty').mkdir()
    assert newest_intact(tmp_path / 'empty') == (None, None, [])
    assert newest_intact(tmp_path / 'absent') == (None, None, [])
    (tmp_path / 'junk').mkdir()
    (tmp_path / 'junk' / 'ep0-ba4-rank0.pt').write_text('not a checkpoint')
    path, _, skipped = newest_intact(tmp_path / 'junk')
    assert path is None and skipped[0][1].startswith('damaged')
