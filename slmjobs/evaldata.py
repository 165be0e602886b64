"""`slmjobs eval-data fetch hellaswag [--file PATH]`: put evaluation data where jobs read it.

Jobs have no network; a login node has. The items go to `<data_root>/evals/hellaswag/`:

    hellaswag_val.jsonl   the items, as fetched (the original file's name)
    manifest.json         written last (its presence marks a finished copy): source, git blob id,
                          sha256, items, whether it is the original validation set

The download is the original `hellaswag_val.jsonl` (rowanz/hellaswag, MIT; the hub's
`Rowan/hellaswag` validation split holds the same items), refused unless its git blob id is the
pinned one. `--file PATH` copies a local file instead (a copy made elsewhere, or test items); one
that is not the original is accepted with a warning, and its manifest says so. The copy is built
beside the folder and renamed into place: a reader sees the old copy or the new one.

The worker reads the same layout (trainer/eval_data.py; the two sides never import each other:
docs/CONTRACTS.md holds it). Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

from slmjobs.errors import UsageError

EVAL_DATA_DIR = "evals"
MANIFEST = "manifest.json"
HELLASWAG_FILE = "hellaswag_val.jsonl"
HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_GIT_BLOB = "0f5ee25d72216f12317d5d8a7b92deafa423d81e"  # `git hash-object`, 10,042 items
HELLASWAG_KEYS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")
TASKS = ("hellaswag",)
TASK_WORD = re.compile(r"^[A-Za-z0-9_.-]+$")  # a task name as `--tasks` and eval.after take it


def git_blob_id(data: bytes) -> str:
    """What `git hash-object FILE` prints: the id the file has in rowanz/hellaswag's history."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def count_items(data: bytes, source: str) -> int:
    """The number of items, each checked to be a HellaSwag item (one line names the first bad one)."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
            ok = isinstance(item, dict) and all(k in item for k in HELLASWAG_KEYS) \
                and len(item["endings"]) == 4 and 0 <= int(item["label"]) < 4
        except (ValueError, TypeError):
            ok = False
        if not ok:
            raise UsageError(f"{source}: line {number} is not a HellaSwag item; allowed: JSON lines with "
                             f"{', '.join(HELLASWAG_KEYS)} (4 endings, label 0-3)")
    if not lines:
        raise UsageError(f"{source}: no items in it; allowed: a HellaSwag jsonl file")
    return len(lines)


def download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.read()
    except OSError as exc:
        raise UsageError(f"could not download {url} ({exc}); on a node without network, copy the file "
                         f"there and pass --file PATH") from None


def fetch(task: str, data_root: Path, file: str | None = None) -> tuple[Path, dict, list[str]]:
    """(the folder, its manifest, warnings). Nothing is left behind on a refusal."""
    if task not in TASKS:
        raise UsageError(f"eval-data fetch {task}: unknown task; allowed: {', '.join(TASKS)} (other tasks "
                         f"come through lm-eval: see README)")
    if file is not None:
        path = Path(file).expanduser().absolute()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"--file {file}: cannot read it ({exc.strerror}); allowed: a HellaSwag jsonl file") from None
        source = str(path)
    else:
        data = download(HELLASWAG_URL)
        source = HELLASWAG_URL
    blob = git_blob_id(data)
    original = blob == HELLASWAG_GIT_BLOB
    if file is None and not original:
        raise UsageError(f"{HELLASWAG_URL}: git blob {blob}, expected {HELLASWAG_GIT_BLOB}; nothing written")
    items = count_items(data, source)
    warnings = [] if original else [
        f"{source} is not the original HellaSwag validation set (git blob {blob[:12]}, expected "
        f"{HELLASWAG_GIT_BLOB[:12]}): its scores are not comparable with published ones"]
    manifest = {"task": task, "file": HELLASWAG_FILE, "source": source, "git_blob": blob,
                "sha256": hashlib.sha256(data).hexdigest(), "items": items, "original": original,
                "fetched_at": time.time()}
    folder = (data_root / EVAL_DATA_DIR / task).absolute()
    write_folder(folder, data, manifest)
    return folder, manifest, warnings


def write_folder(folder: Path, data: bytes, manifest: dict) -> None:
    """The items, then the manifest (fsynced), in a folder beside `folder`, renamed into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, content in ((HELLASWAG_FILE, data), (MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())):
            with open(tmp / name, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
