"""Finding and opening a run's checkpoints without Composer.

Composer writes `ep{epoch}-ba{batch}-rank0.pt` into the save folder and points the
`latest-rank0.pt` symlink at the newest one. A kill in the middle of a save leaves a torn file
(newer than latest, or latest itself on a filesystem that lost the tail), so "newest" must mean
"newest that really loads": latest first, then the others from the highest step down.

A checkpoint is a zip archive (torch.save): a truncated one has no central directory at its end.
Loading uses mmap=True, so opening even a 19 GB gpt2-xl checkpoint reads only the pickled
structure; a tensor's bytes are paged in when something reads them, and optimizer state never is.
"""

from __future__ import annotations

import datetime
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Optional

LATEST = 'latest-rank0.pt'
CHECKPOINT_NAME = re.compile(r'^ep\d+-ba(\d+)-rank0\.pt$')
MODEL_PREFIX = 'model.'  # ComposerGPT keeps the GPT as its `model` attribute


def step_of(path: Path) -> Optional[int]:
    """The batch in Composer's file name (None for a file named otherwise)."""
    m = CHECKPOINT_NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def _safe_globals() -> list:
    """What a Composer checkpoint pickles besides tensors (timestamps, numpy RNG state, the torch
    version string): allowed for weights_only loading, which then never runs foreign code."""
    import numpy as np
    from torch.torch_version import TorchVersion
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, '_core') else np.core.multiarray._reconstruct
    dtypes = {type(np.dtype(t)) for t in ('uint8', 'uint32', 'int64', 'float32', 'float64', 'bool')}
    return [datetime.timedelta, TorchVersion, np.ndarray, np.dtype, reconstruct, *dtypes]


def load(path: Path) -> dict:
    """The checkpoint's dict, tensors memory-mapped on the CPU. weights_only where the file allows
    it; a checkpoint that pickles something else (a user's own callback state) is the user's own
    file, so it is then loaded in full (still mmap)."""
    import torch
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location='cpu', mmap=True, weights_only=True)
    except pickle.UnpicklingError:
        return torch.load(path, map_location='cpu', mmap=True, weights_only=False)


def model_state(checkpoint: dict) -> dict:
    """The GPT's own state dict (keys as in trainer.gpt.GPT) from a loaded Composer checkpoint."""
    weights = checkpoint['state']['model']
    return {k[len(MODEL_PREFIX):]: v for k, v in weights.items() if k.startswith(MODEL_PREFIX)}


def why_damaged(path: Path) -> Optional[str]:
    """None if `path` is a checkpoint that loads, else one short reason."""
    try:
        with zipfile.ZipFile(path) as archive:  # reads the central directory at the end
            if not any(n.endswith('data.pkl') for n in archive.namelist()):
                return 'not a torch checkpoint (no data.pkl)'
        state = load(path)
        if not model_state(state):
            return 'no model weights in it'
    except FileNotFoundError:
        return 'missing'
    except (zipfile.BadZipFile, RuntimeError, pickle.UnpicklingError, EOFError, KeyError, TypeError,
            OSError) as e:
        return f'damaged ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""})'
    return None


def candidates(folder: Path) -> list[Path]:
    """latest-rank0.pt's target first, then every ep*-ba*-rank0.pt from the highest step down."""
    folder = Path(folder)
    ordered = []
    latest = folder / LATEST
    if latest.is_symlink() or latest.exists():
        ordered.append(latest.resolve())
    if folder.is_dir():
        found = sorted(((step_of(p), p) for p in folder.iterdir() if step_of(p) is not None), reverse=True)
        ordered += [p.resolve() for _, p in found if p.resolve() not in ordered]
    return ordered


def newest_intact(folder: Path) -> tuple[Optional[Path], Optional[int], list[tuple[Path, str]]]:
    """(path, step, skipped): the newest checkpoint of `folder` that loads, its step, and the newer
    ones passed over with why. (None, None, skipped) when none loads (or there are none)."""
    skipped = []
    for path in candidates(folder):
        why = why_damaged(path)
        if why is None:
            return path, step_of(path), skipped
        skipped.append((path, why))
    return None, None, skipped


def for_run(run_dir: Path, explicit: Optional[str] = None) -> tuple[Path, Optional[int], list[tuple[Path, str]]]:
    """The checkpoint sample and export read: the one named (it must load), else the run's newest
    intact one. Raises BadInput (one line) when there is none."""
    from trainer.errors import BadInput
    if explicit is not None:
        path = Path(explicit).expanduser().absolute()
        why = why_damaged(path)
        if why is not None:
            raise BadInput(f'--checkpoint {explicit}: {why}; allowed: a checkpoint file that loads')
        step = step_of(path)
        if step is None:  # renamed by the user: the step it was saved at is inside
            step = int(load(path)['state']['timestamp']['Timestamp']['batch'])
        return path, step, []
    folder = Path(run_dir) / 'checkpoints'
    path, step, skipped = newest_intact(folder)
    if path is None:
        if not skipped:
            raise BadInput(f'{run_dir}: no checkpoint in {folder} yet (has the run trained past its '
                           f'first save?)')
        passed = '; '.join(f'{p.name}: {why}' for p, why in skipped)
        raise BadInput(f'{run_dir}: no intact checkpoint in {folder} ({passed})')
    return path, step, skipped


DAMAGED_SUFFIX = '.damaged'


def settle_latest(folder: Path) -> tuple[Optional[int], list[tuple[Path, Optional[int], str]]]:
    """Before a resume: point `latest-rank0.pt` at the newest checkpoint that really loads
    (newest_intact), setting every newer one aside as `*.damaged` (never deleted). Returns the
    step resumed from (None: no checkpoint yet, or none that loads) and what was passed over:
    (path, step, why), a file that is gone included. The chain's `begin` checks the same way
    without torch; this catches what changed after it, or what only torch can see."""
    import os
    folder = Path(folder)
    latest = folder / LATEST
    if not latest.is_symlink():
        return None, []  # a fresh run (or one its user restarts from scratch)
    path, step, skipped = newest_intact(folder)
    passed = []
    for bad, why in skipped:
        if bad.exists():
            os.replace(bad, bad.with_name(bad.name + DAMAGED_SUFFIX))
        passed.append((bad, step_of(bad), why))
    if path is not None and path != latest.resolve():
        tmp = folder / f'.latest-rank0.pt.{os.getpid()}'
        tmp.unlink(missing_ok=True)
        os.symlink(path.name, tmp)
        os.replace(tmp, latest)
    return step, passed


def record_set_aside(run_dir: Path, link: Optional[int], passed: list, resumes_from: Optional[int]) -> None:
    """Each checkpoint passed over, as a `checkpoint_set_aside` event in the run's ledger
    (docs/CONTRACTS.md: one JSON line, appended under an exclusive flock, as every writer of
    jobs.jsonl does). A worker run without the launcher (no ledger) records nothing."""
    import fcntl
    import json
    import os
    import time
    ledger = Path(run_dir) / 'jobs.jsonl'
    if not ledger.exists():
        return
    for path, step, why in passed:
        event = {'event': 'checkpoint_set_aside', 'link': link, 'path': str(path), 'step': step,
                 'reason': why, 'resumes_from': resumes_from, 'time': time.time()}
        line = (json.dumps(event, separators=(',', ':')) + '\n').encode()
        fd = os.open(ledger, os.O_RDWR | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b'\n':
                line = b'\n' + line
            os.write(fd, line)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# Finite weights: a diverged run's NaN model is no model (sample, export)
# ---------------------------------------------------------------------------------------------

def non_finite(tensor) -> Optional[str]:
    """'nan' or 'inf' when `tensor` holds one (NaN named first), else None."""
    import torch
    if bool(torch.isfinite(tensor).all()):
        return None
    return 'nan' if bool(torch.isnan(tensor).any()) else 'inf'


def refuse_non_finite(path: Path, weights: dict) -> None:
    """BadInput naming the first tensor of `weights` (a checkpoint's model state) that holds a
    NaN or an infinity. Reads every weight once, handing each one's pages back afterwards (see
    page_out): a gpt2-xl checkpoint is not kept resident for this."""
    from trainer.errors import BadInput
    for name, tensor in weights.items():
        found = non_finite(tensor)
        page_out(tensor)
        if found is not None:
            raise BadInput(f'checkpoint {path}: weight {name} holds {found} (the run diverged before '
                           f'this save); allowed: a checkpoint whose weights are all finite (name an '
                           f'earlier one with --checkpoint, from {Path(path).parent})')


MADV_PAGEOUT = 21  # Linux >= 5.4 (<linux/mman.h>); Python's mmap module does not always name it


def page_out(tensor) -> None:
    """Hint that the checkpoint pages behind `tensor` (memory-mapped by load) are done with, so
    reading a whole checkpoint (export, refuse_non_finite) keeps resident memory about one tensor
    instead of growing to the whole model. Only a hint: the data
    stays valid (it is read from the file again if touched); where the kernel lacks it, nothing."""
    import ctypes
    import mmap
    if not sys.platform.startswith('linux'):
        return
    storage = tensor.untyped_storage()
    start = -(-storage.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside it
    end = storage.data_ptr() + storage.nbytes()
    if end > start:
        ctypes.CDLL(None, use_errno=True).madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start),
                                                  MADV_PAGEOUT)
