"""Directories the worker's tools finish elsewhere and then put in place (a prepared dataset,
an exported model): a reader sees the old one or the new one, never half of either; and the
directories made above them, gone again when the tool fails."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def replace_directory(finished: Path, out: Path) -> None:
    """Move `finished` to `out`; an old `out` is removed only once the new one is there."""
    old = None
    if out.exists():
        old = out.with_name(f'.{out.name}.old-{os.getpid()}')
        out.rename(old)
    finished.rename(out)
    if old is not None:
        shutil.rmtree(old)


@contextmanager
def parents_made_for(out: Path):
    """Make the missing directories above `out`; when the block fails, remove those of them that
    are still empty, deepest first. A failed tool leaves no empty directories behind and never
    removes one that existed before (or one that holds something, such as a partial dataset
    kept to resume from)."""
    missing = []
    for parent in out.parents:  # nearest first
        if parent.exists():
            break
        missing.append(parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        yield
    except BaseException:
        for directory in missing:
            try:
                directory.rmdir()
            except OSError:  # not empty, or not ours to remove any more
                break
        raise
