"""Every `slmjobs` command's filesystem faults are one line, with the worker's statuses: 74 for
no space (or quota), 73 for a read-only filesystem or a permission denied. For real: the runs root
on a small tmpfs, remounted read-only or filled with a real file (tests run as root)."""

from __future__ import annotations

import os
import subprocess

import pytest

from support import tmpfs


@pytest.fixture(autouse=True)
def with_data(data_root):
    """The launches here have the default dataset to find (SLMJOBS_DATA_ROOT)."""


def fill(directory) -> None:
    stat = os.statvfs(directory)
    with open(directory / "filler", "wb") as handle:
        try:
            handle.write(b"\0" * (stat.f_bavail * stat.f_frsize))
        except OSError:
            pass


def assert_one_line(proc, status: int, *needles: str) -> None:
    assert proc.returncode == status, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slmjobs: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_launch_onto_a_read_only_or_full_runs_root_is_one_line(tmp_path, run_cli):
    with tmpfs(tmp_path / "disk", "64k") as mount:
        env = {"SLMJOBS_RUNS_ROOT": str(mount / "runs")}
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        proc = run_cli("launch", "tiny", "--name", "r", env=env)
        assert_one_line(proc, 73, f"Read-only file system: {mount / 'runs'} (filesystem {mount}, tmpfs)",
                        "allowed: a runs root")
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
        fill(mount)
        proc = run_cli("launch", "tiny", "--name", "r", env=env)
        assert_one_line(proc, 74, "No space left on device", "free some space or raise the quota")
    assert not list((tmp_path / "local-state").rglob("*.json"))  # no job record: nothing submitted
