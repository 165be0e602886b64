"""Directories the worker's tools finish elsewhere and then put in place (a prepared dataset,
an exported model): a reader sees the old one or the new one, never half of either."""

from __future__ import annotations

import os
import shutil
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
