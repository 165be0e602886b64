"""What a failure of training means for the chain, when it is not a crash.

Three failures of training will happen again however often a link is retried, so the worker
exits with a status of its own instead of spending the chain's crash budget (docs/CONTRACTS.md):

- the loss or the weights became non-finite (trainer.callbacks.HandOff raised Diverged before
  anything was saved): diverged, 65;
- wandb refused the credentials (a wrong or revoked WANDB_API_KEY): a bad configuration, 2;
- a checkpoint could not be saved for lack of space or quota: disk full, 74. torch's zip
  writer reports a full disk as `unexpected pos N vs M`, so a write error counts as one when
  the checkpoint folder's filesystem is (nearly) full.

The worker's tools (prepare, export) meet the same filesystems: filesystem_failure turns a full
one (74), or one that refuses the write (73), into one line for them.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path
from typing import Optional

from trainer.errors import (EXIT_BAD_INPUT, EXIT_CANT_CREATE, EXIT_DISK_FULL, EXIT_DIVERGED, BadInput,
                            Diverged)

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
NEARLY_FULL = 64 << 20  # bytes free under which a failed write is taken for a full disk
_WRITE_FAILED = re.compile(r'unexpected pos|file write failed|no space left|quota', re.I)
_AUTH_FAILED = re.compile(r'not logged in|401|unauthori[sz]ed|invalid api key|api key', re.I)


def exit_for(exc: BaseException, checkpoint_dir: Path) -> Optional[tuple[int, str]]:
    """(exit status, one line) when `exc` is one of the failures above, else None."""
    for cause in causes(exc):
        if isinstance(cause, Diverged):
            return EXIT_DIVERGED, str(cause)
        if isinstance(cause, BadInput):  # found only once training started (e.g. no checkpoint loads)
            return EXIT_BAD_INPUT, str(cause)
        if is_wandb_auth_failure(cause):
            return EXIT_BAD_INPUT, (f'wandb refused the credentials ({first_line(cause)}): allowed '
                                    'is a valid WANDB_API_KEY (wandb login), or wandb.mode=offline')
        if is_write_failure(cause) and free_bytes(checkpoint_dir) < NEARLY_FULL:
            return EXIT_DISK_FULL, no_space_line(checkpoint_dir)
    return None


def causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def is_wandb_auth_failure(exc: BaseException) -> bool:
    errors = getattr(sys.modules.get('wandb'), 'errors', None)
    if errors is None:
        return False
    if isinstance(exc, getattr(errors, 'AuthenticationError', ())):
        return True
    return isinstance(exc, getattr(errors, 'CommError', ())) and bool(_AUTH_FAILED.search(str(exc)))


def is_write_failure(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, (OSError, RuntimeError)) and bool(_WRITE_FAILED.search(str(exc)))


def free_bytes(path: Path) -> int:
    try:
        stat = os.statvfs(path)
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


def size_bytes(path: Path) -> int:
    try:
        stat = os.statvfs(path)
    except OSError:
        return 0
    return stat.f_blocks * stat.f_frsize


def no_space_line(folder: Path) -> str:
    mount, kind = filesystem_of(folder)
    return (f'no space left to save a checkpoint in {folder}: {free_bytes(folder) / 2**20:.1f} MiB '
            f'free on {mount} ({kind}); free some space or raise the quota, then continue with '
            'slmjobs resume (the last checkpoint that was saved is intact)')


def filesystem_failure(exc: BaseException, writing: Path) -> Optional[tuple[int, str]]:
    """(exit status, one line) when a tool's output (a dataset, an export) could not be written
    for a reason retrying cannot fix: no space or quota (74), or a filesystem that refuses the
    write, read-only or without permission (73). None for any other error. `writing`: what was
    being written, named when the error itself names no file (a failed write() does not)."""
    if not isinstance(exc, OSError) or exc.errno not in NO_SPACE + NOT_WRITABLE:
        return None
    path = Path(exc.filename or writing)
    mount, kind = filesystem_of(path)
    if exc.errno in NO_SPACE:
        return EXIT_DISK_FULL, (f'{path}: {exc.strerror} (filesystem {mount}, {kind}, '
                                f'{size_bytes(Path(mount)) / 2**20:.1f} MiB: {free_bytes(Path(mount)) / 2**20:.1f} '
                                f'MiB free now); free some space or raise the quota, then run the command again')
    if exc.errno == errno.EROFS:
        return EXIT_CANT_CREATE, (f'{path}: {exc.strerror} (filesystem {mount}, {kind}); allowed: an '
                                  f'output on a writable filesystem')
    return EXIT_CANT_CREATE, (f'{path}: {exc.strerror} (filesystem {mount}, {kind}); allowed: an output '
                              f'where you may write (or fix the permissions of {path.parent})')


def filesystem_of(path: Path) -> tuple[str, str]:
    """(mount point, type) from /proc/mounts: the longest mount point above `path`."""
    path = os.path.realpath(path)
    best = ('/', 'unknown')
    try:
        with open('/proc/mounts') as mounts:
            for fields in (line.split() for line in mounts):
                point = fields[1] if len(fields) > 2 else None
                if point and (path == point or path.startswith(point.rstrip('/') + '/')) \
                        and len(point) >= len(best[0]):
                    best = (point, fields[2])
    except OSError:
        pass
    return best
