"""The filesystem faults of `slmjobs prepare` and `slmjobs export`, for real: one line naming the
path and the filesystem, exit 74 for no space (EX_IOERR, as the worker's failed checkpoint save)
and 73 for a filesystem that refuses the write (EX_CANTCREAT: read-only, permission denied), and
nothing left behind -- but a full disk keeps the pieces a preparation recorded, and the same
command finishes the dataset once there is room.

Full: a small tmpfs (tests run as root). Read-only: a tmpfs remounted read-only. Permission: the
command runs as root without CAP_DAC_OVERRIDE (setpriv), into a directory of mode 0555. A quota
(EDQUOT) cannot be made here (this kernel's tmpfs has no quota option and loop devices do not
mount), so its line is checked on the error itself; the code treats it as a full disk.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from support import PYTHON, REPO, tmpfs
from test_prepare import dataset_files
from test_sample_export import copy_run

PREPARE = ('prepare', '--source', 'builtin', '--max-documents', '60', '--seq-len', '32')
NO_DAC = ('setpriv', '--bounding-set=-dac_override,-dac_read_search')  # root, bound by modes


def slmjobs(*args: str, cwd: Path, prefix: tuple = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE='offline')
    return subprocess.run([*prefix, PYTHON, '-m', 'slmjobs', *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line(proc: subprocess.CompletedProcess, status: int, *needles: str) -> None:
    assert proc.returncode == status, f'exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}'
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def read_only(mount: Path) -> Path:
    subprocess.run(['mount', '-o', 'remount,ro', str(mount)], check=True)
    return mount


# ------------------------------------------------------------------------------------ prepare

def test_prepare_onto_a_full_filesystem_is_one_line_and_leaves_nothing(tmp_path):
    with tmpfs(tmp_path / 'small', '256k') as mount:
        out = mount / 'made' / 'by-it' / 'ds'
        proc = slmjobs(*PREPARE, '--out', str(out), cwd=tmp_path)
        assert_one_line(proc, 74, f'{out}: No space left on device', f'filesystem {mount}, tmpfs',
                        'free some space or raise the quota, then run the command again')
        assert list(mount.iterdir()) == []  # no work directory, no empty parents


def test_a_full_disk_keeps_the_recorded_pieces_and_the_same_command_finishes(tmp_path):
    pieces = ('--piece-chars', '50000')  # ~100 KB of shards each: two fit in 300 KB
    reference = tmp_path / 'reference'
    assert slmjobs(*PREPARE, *pieces, '--out', str(reference), cwd=tmp_path).returncode == 0
    with tmpfs(tmp_path / 'small', '300k') as mount:
        out = mount / 'ds'
        proc = slmjobs(*PREPARE, *pieces, '--out', str(out), cwd=tmp_path)
        assert_one_line(proc, 74, f'{out}: No space left on device', 'piece(s) kept in')
        assert not out.exists() and (mount / '.ds.partial' / 'pieces.jsonl').is_file()
        subprocess.run(['mount', '-o', 'remount,size=4m', str(mount)], check=True)
        proc = slmjobs(*PREPARE, *pieces, '--out', str(out), cwd=tmp_path)
        assert proc.returncode == 0 and ', resumed at piece ' in proc.stdout, proc.stderr
        assert dataset_files(out) == dataset_files(reference)
        assert sorted(p.name for p in mount.iterdir()) == ['ds']


def test_prepare_onto_a_read_only_filesystem_is_one_line(tmp_path):
    with tmpfs(tmp_path / 'ro', '1m') as mount:
        read_only(mount)
        proc = slmjobs(*PREPARE, '--out', str(mount / 'a' / 'ds'), cwd=tmp_path)
        assert_one_line(proc, 73, f'{mount / "a"}: Read-only file system', f'filesystem {mount}, tmpfs',
                        'allowed: an output on a writable filesystem')


def test_prepare_where_it_may_not_write_is_one_line_and_leaves_nothing(tmp_path):
    closed = tmp_path / 'closed'
    closed.mkdir(mode=0o555)
    proc = slmjobs(*PREPARE, '--out', str(closed / 'a' / 'ds'), cwd=tmp_path, prefix=NO_DAC)
    assert_one_line(proc, 73, f'{closed / "a"}: Permission denied', f'fix the permissions of {closed}')
    assert list(closed.iterdir()) == []


def test_a_quota_is_a_full_disk():
    from trainer.failures import filesystem_failure
    error = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))  # a failed write() names no file
    status, line = filesystem_failure(error, Path('/scratch/me/ds'))
    assert status == 74
    assert line.startswith('/scratch/me/ds: Disk quota exceeded (filesystem /')
    assert line.endswith('free some space or raise the quota, then run the command again')


# ------------------------------------------------------------------------------------- export

def test_export_onto_a_full_or_read_only_filesystem_is_one_line_and_leaves_nothing(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path / 'run')
    with tmpfs(tmp_path / 'small', '64k') as mount:
        out = mount / 'models' / 'hf'
        proc = slmjobs('export', str(run_dir), '--out', str(out), cwd=tmp_path)
        assert_one_line(proc, 74, f'{out}: No space left on device', f'filesystem {mount}, tmpfs')
        assert list(mount.iterdir()) == []  # no half-written export, no scratch, no parents
        read_only(mount)
        proc = slmjobs('export', str(run_dir), '--out', str(out), cwd=tmp_path)
        assert_one_line(proc, 73, f'{mount / "models"}: Read-only file system')
    closed = tmp_path / 'closed'
    closed.mkdir(mode=0o555)
    proc = slmjobs('export', str(run_dir), '--out', str(closed / 'hf'), cwd=tmp_path, prefix=NO_DAC)
    assert_one_line(proc, 73, 'Permission denied', f'fix the permissions of {closed}')
    assert list(closed.iterdir()) == []
