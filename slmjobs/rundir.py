"""The run directory, `<runs_root>/<run_name>/`: its layout and every read and write of its files
except the ledger's events (slmjobs.events) and what the scheduler and the trainer write.
The layout is docs/CONTRACTS.md's table; every other module asks here for a path.

    load_run(run_dir) -> dict          run.yaml (the request as launched)
    save_run(run_dir, spec)            run.yaml and its JSON digest, atomically
    run_summary(run_dir) -> dict       what status needs from run.yaml, through the digest
    read_progress(run_dir) -> dict     the trainer's heartbeat (progress.json)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from pathlib import Path

from slmjobs import ledger
from slmjobs.errors import UsageError

RUN_FILE = "run.yaml"
SUMMARY_FILE = "run-summary.json"
PROGRESS_FILE = "progress.json"
DONE_FILE = "DONE"
LEDGER_FILE = ledger.LEDGER_NAME   # its format and writers: slmjobs.ledger
CHECKPOINTS = "checkpoints"
LATEST_CHECKPOINT = "latest-rank0.pt"
HISTORY_FILE = "metrics.jsonl"     # its format and reader: slmjobs.history
LOCK_FILE = ".lock"                # held by whatever changes the chain from outside
# The files a status row is computed from: a row is valid while none of them changed.
STATUS_INPUTS = (RUN_FILE, LEDGER_FILE, PROGRESS_FILE, DONE_FILE, "evals.jsonl")  # evals: slmjobs.evals


# ------------------------------------------------------------------------ paths
def script_path(run_dir, link: int) -> Path:
    return Path(run_dir) / "scripts" / f"link-{int(link):03d}.sh"


def log_path(run_dir, link: int) -> Path:
    return Path(run_dir) / "logs" / f"link-{int(link):03d}.log"


def link_logs(run_dir) -> list[Path]:
    return sorted((Path(run_dir) / "logs").glob("link-*.log"))


def checkpoints_dir(run_dir) -> Path:
    return Path(run_dir) / CHECKPOINTS


def history_path(run_dir) -> str:
    return os.path.join(run_dir, HISTORY_FILE)


def plot_path(run_dir, metric: str) -> Path:
    return Path(run_dir) / "plots" / f"{metric}.png"


def is_run_dir(path) -> bool:
    return (Path(path) / RUN_FILE).is_file()


def create(run_dir: Path, spec: dict) -> None:
    """The run directory with its run.yaml, or FileExistsError if the name is taken.

    Atomic for everyone who looks: a lock on the runs root directory is held from the check to
    the last write, so a directory without run.yaml can only be what a launcher killed in the middle
    left behind (its lock died with it), and it is taken over. Private (0700): run.yaml holds
    the user's overrides and paths."""
    import fcntl

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    root = os.open(run_dir.parent, os.O_RDONLY)
    try:
        fcntl.flock(root, fcntl.LOCK_EX)  # released by close, or by the kernel when killed
        if run_dir.exists() and not is_run_dir(run_dir) and not (run_dir / LEDGER_FILE).exists():
            import shutil

            shutil.rmtree(run_dir)  # a killed launch's half-made directory
        run_dir.mkdir(mode=0o700)
        save_run(run_dir, spec)
        (run_dir / "scripts").mkdir()
        (run_dir / "logs").mkdir()
    finally:
        os.close(root)


# ------------------------------------------------------------------ atomic writes
def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `text` to `path` through a scratch file and a rename: a reader sees the old file
    or the new one, never half of one; a failed write leaves no scratch behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------ run.yaml
def yaml_loader():
    import yaml  # only when a run is read: keeps `slmjobs --help` light

    return yaml, getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~8x faster


def load_run(run_dir) -> dict:
    """run.yaml as written by the launcher (and updated by `slmjobs resume`). UsageError when
    it is missing or is not one."""
    yaml, loader = yaml_loader()
    path = Path(run_dir) / RUN_FILE
    try:
        with open(path, encoding="utf-8") as handle:
            spec = yaml.load(handle, Loader=loader)
    except FileNotFoundError:
        raise UsageError(f"{run_dir} is not a run directory: {RUN_FILE} not found") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path} is unreadable: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict):
        raise UsageError(f"{path}: not a run description written by slmjobs")
    return spec


def save_run(run_dir, spec: dict) -> None:
    """run.yaml, then its digest (status reads 1,000 runs without loading YAML)."""
    import yaml

    atomic_write(Path(run_dir) / RUN_FILE,
                 yaml.safe_dump(spec, sort_keys=False, default_flow_style=False))
    write_summary(run_dir, summarize(spec))


def run_kind(spec: dict) -> str:
    """What the run does (slmjobs.kinds); runs launched before kinds existed trained."""
    return spec.get("kind") or "train"


def summarize(spec: dict) -> dict:
    """What status needs from run.yaml."""
    return {"name": spec["name"], "kind": run_kind(spec), "model": spec.get("model"),
            "gpus": spec.get("gpus"), "scheduler": spec["cluster"]["scheduler"],
            "max_links": spec["chain"]["max_links"], "sweep": spec.get("sweep")}


def unreadable_summary(why: str) -> dict:
    """The digest of a run whose run.yaml cannot be read: no scheduler is asked about it."""
    return {"name": None, "kind": None, "model": None, "gpus": None, "scheduler": None,
            "max_links": None, "error": why}


def run_summary(run_dir) -> dict:
    """What status needs from run.yaml. Loading YAML costs ~1 ms a file (1.3 s over 1,000 runs)
    and JSON ~30 µs, so the launcher writes this digest beside run.yaml, stamped with run.yaml's
    (mtime, size). A missing or stale digest (run.yaml edited by hand, a run launched by an
    older slmjobs) is rebuilt from the YAML, and rewritten when the run directory lets us."""
    stamp = file_stamp(os.path.join(run_dir, RUN_FILE))
    if stamp is None:
        return unreadable_summary(f"no {RUN_FILE}")
    try:
        with open(os.path.join(run_dir, SUMMARY_FILE), "rb") as handle:
            digest = json.loads(handle.read())
        if digest["run_yaml"] == stamp and isinstance(digest["summary"], dict):
            return digest["summary"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        summary = summarize(read_run_yaml(run_dir))
    except (UsageError, KeyError, TypeError) as exc:
        return unreadable_summary(f"{RUN_FILE} unreadable ({exc})")
    write_summary(run_dir, summary, stamp)
    return summary


def read_run_yaml(run_dir) -> dict:
    """load_run, the seam status uses (a test counts YAML loads through it)."""
    return load_run(run_dir)


def write_summary(run_dir, summary: dict, stamp: list | None = None) -> None:
    """Best effort (someone else's run is read-only to us). `stamp`: run.yaml's when `summary`
    was read from it; by default its stamp now (the launcher, just after writing it)."""
    stamp = stamp or file_stamp(os.path.join(run_dir, RUN_FILE))
    try:
        atomic_write(Path(run_dir) / SUMMARY_FILE,
                     json.dumps({"run_yaml": stamp, "summary": summary}))
    except OSError:
        pass


def file_stamp(path: str):
    """(mtime_ns, size) of a file, or None when it is not there."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_mtime_ns, stat.st_size]


def status_stamps(run_dir) -> list:
    """(mtime, size) of every file a status row is computed from."""
    return [file_stamp(os.path.join(run_dir, name)) for name in STATUS_INPUTS]


# ------------------------------------------------------------------ JSON-lines files
def read_json_lines(path) -> list[dict]:
    """The objects of a JSON-lines file a worker appends to (metrics.jsonl, evals.jsonl), in
    order; [] when there is none. A torn line (a writer killed mid-write) or a foreign one is
    skipped."""
    try:
        with open(path, "rb") as handle:
            return ledger.parse(handle.read())  # the ledger's own reader: the same rules
    except FileNotFoundError:
        return []


# ------------------------------------------------------------------ progress, DONE
def read_progress(run_dir) -> dict:
    """The trainer's heartbeat, or {} when there is none (yet) or it is unreadable."""
    try:  # plain os.path: status reads a thousand of these
        with open(os.path.join(run_dir, PROGRESS_FILE), "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def latest_checkpoint_name(run_dir) -> str | None:
    """Where Composer's `latest-rank0.pt` symlink points, or None."""
    try:
        return os.readlink(checkpoints_dir(run_dir) / LATEST_CHECKPOINT)
    except OSError:
        return None


def is_done(run_dir) -> bool:
    return os.path.exists(os.path.join(run_dir, DONE_FILE))


def mark_done(run_dir, text: str) -> None:
    atomic_write(Path(run_dir) / DONE_FILE, text)


# ------------------------------------------------------------------ one changer at a time
@contextlib.contextmanager
def locked(run_dir, wait_seconds: float = 60):
    """Held by every command that changes a run's chain from outside (resume, cancel, a
    waiting run's start): two `slmjobs resume` at once are one after the other, and the second
    finds the first one's link. UsageError when another holder keeps it past `wait_seconds`."""
    fd = os.open(os.path.join(run_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        give_up = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > give_up:
                    raise UsageError(f"run {Path(run_dir).name} is being changed by another slmjobs "
                                     f"command (for over {wait_seconds:.0f} s): allowed is to try "
                                     "again once it is done") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # also releases the lock


# ------------------------------------------------------------------ room on the disk
def filesystem_of(path) -> tuple[str, str]:
    """(mount point, filesystem type) of the filesystem `path` is on, from /proc/mounts."""
    path = os.path.realpath(path)
    best = ("/", "unknown")
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 2 and (path == fields[1] or path.startswith(fields[1].rstrip("/") + "/")) \
                        and len(fields[1]) >= len(best[0]):
                    best = (fields[1], fields[2])
    except OSError:
        pass
    return best


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


# The worker's statuses for the same faults (docs/CONTRACTS.md; trainer.failures words its own).
EXIT_CANT_CREATE, EXIT_NO_SPACE = 73, 74
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def filesystem_failure(exc: BaseException) -> tuple[int, str] | None:
    """(exit status, one line) for a write the filesystem refused for a reason retrying cannot
    fix: no space or quota (74), read-only or permission denied (73); None for anything else."""
    if not isinstance(exc, OSError) or exc.errno not in NO_SPACE + NOT_WRITABLE:
        return None
    where = "a write failed"  # a failed write() names no file
    if exc.filename:
        mount, kind = filesystem_of(exc.filename)
        where = f"{exc.filename} (filesystem {mount}, {kind})"
    if exc.errno in NO_SPACE:
        return EXIT_NO_SPACE, (f"{exc.strerror}: {where}; free some space or raise the quota, then "
                               f"run the command again")
    return EXIT_CANT_CREATE, (f"{exc.strerror}: {where}; allowed: a runs root (SLMJOBS_RUNS_ROOT, the "
                              f"profile's runs_root) and outputs where you may write")


def no_room_for_a_checkpoint(run_dir) -> str | None:
    """Why the run cannot save its next checkpoint (the newest one's size twice over: the new
    file is written before the old one goes), or None when there is room."""
    folder = checkpoints_dir(run_dir)
    target = folder / (latest_checkpoint_name(run_dir) or "")
    size = target.stat().st_size if target.is_file() else 0
    needed = max(2 * size, 1 << 20)
    where = folder if folder.is_dir() else Path(run_dir)
    stat = os.statvfs(where)
    free = stat.f_bavail * stat.f_frsize
    if free >= needed:
        return None
    mount, kind = filesystem_of(where)
    return (f"no room for a checkpoint in {where}: {human_bytes(free)} free on {mount} ({kind}), "
            f"a checkpoint needs about {human_bytes(needed)}; free some space or raise the quota")
