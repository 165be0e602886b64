"""Which checkpoint the next link resumes from: the newest one that is intact.

Composer writes `ep<E>-ba<STEP>-rank0.pt` with plain torch.save (a zip archive) and points
`latest-rank0.pt` at the newest. A node that died mid-write on a network filesystem, or a bad
disk, can leave the newest one damaged; every later link would then crash on it while an intact
older one sits beside it. Before a link's worker starts, the chain checks the checkpoint it is
about to load and sets a damaged one aside (renamed `*.damaged`, never deleted), pointing
`latest-rank0.pt` at the newest intact one. The worker then applies the whole rule (the archive
must also load with torch: trainer.checkpoints.newest_intact) and falls back itself, recording
it the same way, if a file was damaged after this check.

The check reads only the zip archive's central directory and entry headers (the standard
library, no torch): it finds a truncated or overwritten file in milliseconds whatever its size.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from slmjobs import rundir

CHECKPOINT_NAME = re.compile(r"^ep\d+-ba(\d+)-rank0\.pt$")
DAMAGED_SUFFIX = ".damaged"


@dataclass
class Check:
    """What `ensure_intact_latest` did: the checkpoints set aside (path, step, why) and the
    step `latest` points at now (None: no checkpoint, or none intact)."""
    set_aside: list = field(default_factory=list)
    latest_step: int | None = None
    none_intact: bool = False


def damage(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be loaded, or None when its archive is whole."""
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                if entry.header_offset + entry.compress_size > size:
                    return f"entry {entry.filename} runs past the end of the file"
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return f"not a whole checkpoint archive ({exc})"
    return None


def by_step(folder: Path) -> list[tuple[int, Path]]:
    """The checkpoints in `folder`, newest first."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name))]
    return sorted(found, reverse=True)


def point_latest_at(folder: Path, target: Path) -> None:
    tmp = folder / f".latest-rank0.pt.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(target.name, tmp)
    os.replace(tmp, folder / rundir.LATEST_CHECKPOINT)


def ensure_intact_latest(run_dir) -> Check:
    """Make `latest-rank0.pt` point at the newest intact checkpoint, by the rule the worker,
    sample and export use (trainer.checkpoints.newest_intact): latest's target first, then every
    checkpoint from the highest step down. Damaged ones are set aside; a target that is gone is
    reported too, so no fallback to an older checkpoint is ever silent. A run with no
    checkpoint yet is left alone."""
    folder = rundir.checkpoints_dir(run_dir)
    check = Check()
    latest = folder / rundir.LATEST_CHECKPOINT
    if not latest.is_symlink():
        return check
    target = folder / os.readlink(latest)
    candidates = [path for _, path in by_step(folder) if path != target]
    if target.exists():
        candidates.insert(0, target)
    else:
        check.set_aside.append((str(target), _step_of(latest), "missing: latest-rank0.pt points "
                                                                "at a file that is gone"))
    for path in candidates:
        why = damage(path)
        if why is None:
            if path != target:
                point_latest_at(folder, path)
            check.latest_step = int(CHECKPOINT_NAME.match(path.name).group(1)) \
                if CHECKPOINT_NAME.match(path.name) else None
            return check
        os.replace(path, path.with_name(path.name + DAMAGED_SUFFIX))
        check.set_aside.append((str(path), _step_of_name(path.name), why))
    check.none_intact = True
    return check


def none_intact(run_dir) -> bool:
    """Is there a latest-rank0.pt and no checkpoint at all that is whole? (Resume refuses.)"""
    folder = rundir.checkpoints_dir(run_dir)
    if not (folder / rundir.LATEST_CHECKPOINT).is_symlink():
        return False  # none yet, or removed by the user to start over
    return not any(damage(path) is None for _, path in by_step(folder))


def _step_of(latest: Path) -> int:
    return _step_of_name(os.readlink(latest))


def _step_of_name(name: str) -> int:
    match = CHECKPOINT_NAME.match(os.path.basename(name))
    return int(match.group(1)) if match else -1
