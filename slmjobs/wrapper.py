"""What a link of a `command` run (slmjobs/kinds/command.py) runs: the user's command under the
contract of docs/CONTRACTS.md ("Any command"), standard library only.

    python -m slmjobs.wrapper RUN_DIR [--stop-signal SIG] [--resume-glob GLOB] [--ignore-warnings]
                              -- CMD ARGS...

It gives the command the contract's variables (SLMJOBS_CHECKPOINT_DIR created,
SLMJOBS_RESUME_FROM found), starts it in a process group of its own, sends `--stop-signal` to
that group at the deadline (or at once when the scheduler warns this job with SIGUSR1, SIGUSR2 or
SIGTERM, unless --ignore-warnings), and exits with the command's status. The command's own group
keeps the scheduler's group signals away from a program that would die of them; a guard in that group kills it the
moment this wrapper dies, because the scheduler's hard kill (h_rt, SIGKILL) reaches only the
job's group and a command left behind would train beside the next link.
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import subprocess
import sys
import time

from slmjobs import link

# The signals --stop-signal may name: those a program can catch and act on.
STOP_SIGNAL_NAMES = ("TERM", "INT", "HUP", "USR1", "USR2", "QUIT")
# The scheduler's warnings to the job's group (s_rt, -notify, a site's terminate_method).
WARNINGS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
# The guard: reads its stdin, a pipe whose only writer is this wrapper, to EOF (= the wrapper
# is gone, however it ended), then kills its whole process group, the command's. It ignores the
# stop signals, which are sent to that same group.
GUARD = "trap '' " + " ".join(STOP_SIGNAL_NAMES) + "; cat >/dev/null; kill -KILL 0"


def stop_signal(name: str | None) -> signal.Signals | None:
    """The signal named `name` (TERM or SIGTERM), or None; ValueError for another name."""
    if name is None:
        return None
    bare = name.upper().removeprefix("SIG")
    if bare not in STOP_SIGNAL_NAMES:
        raise ValueError(f"unknown --stop-signal {name!r}: allowed are "
                         f"{', '.join(STOP_SIGNAL_NAMES)} (with or without SIG)")
    return signal.Signals[f"SIG{bare}"]


def newest_match(pattern: str | None) -> str | None:
    """The newest file (by modification time) matching `pattern`, relative to the working
    directory; None if nothing matches."""
    if not pattern:
        return None
    found = []
    for path in glob.glob(pattern, recursive=True):
        try:
            found.append((os.stat(path).st_mtime_ns, path))
        except OSError:
            continue  # removed while we looked
    return os.path.abspath(max(found)[1]) if found else None


def resume_point(run_dir: str, pattern: str | None) -> str | None:
    """What the command continues from: its own declaration if that still exists, else the
    newest match of --resume-glob."""
    declared = link.declared_checkpoint(run_dir).get("path")
    if declared and os.path.exists(declared):
        return declared
    return newest_match(pattern)


def contract_env(run_dir: str, pattern: str | None) -> dict:
    checkpoints = os.path.join(run_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    return {**os.environ, "SLMJOBS_RUN_DIR": run_dir, "SLMJOBS_CHECKPOINT_DIR": checkpoints,
            "SLMJOBS_RESUME_FROM": resume_point(run_dir, pattern) or ""}


def in_group(pgid: int) -> dict:
    """Popen arguments that put the new process in process group `pgid` (0: a new one)."""
    if sys.version_info >= (3, 11):
        return {"process_group": pgid}
    return {"preexec_fn": lambda: os.setpgid(0, pgid)}


class Command:
    """The command in its own process group, with its guard."""

    def __init__(self, argv: list[str], env: dict):
        read_end, self._write_end = os.pipe()
        self.guard = subprocess.Popen(["/bin/sh", "-c", GUARD], stdin=read_end, **in_group(0))
        os.close(read_end)
        self.group = self.guard.pid
        # Signals the job script ignores must not stay ignored in the command (exec keeps an
        # ignored signal ignored; a handled one it resets to the default).
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        self.process = subprocess.Popen(argv, env=env, **in_group(self.group))

    def signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.group, sig)
        except ProcessLookupError:
            pass


def run(run_dir: str, argv: list[str], stop: signal.Signals | None, pattern: str | None,
        warnings_stop: bool = True) -> int:
    env = contract_env(run_dir, pattern)
    print(f"slmjobs.wrapper: resuming from {env['SLMJOBS_RESUME_FROM'] or '(nothing: a fresh start)'}",
          flush=True)
    started: list[Command] = []
    sent: list[str] = []

    def send_stop(why: str) -> None:
        if stop is not None and started and not sent:
            sent.append(why)
            print(f"slmjobs.wrapper: {why}: sending {stop.name} to the command", flush=True)
            started[0].signal(stop)

    for sig in WARNINGS:  # before the command starts: the job script had them ignored
        if warnings_stop:
            signal.signal(sig, lambda signum, frame: send_stop(f"received {signal.Signals(signum).name}"))
        else:  # only the deadline hands off (the submitit kind: a qdel's -notify must not).
            # A handler, not SIG_IGN: the command must not inherit the signal ignored.
            signal.signal(sig, lambda signum, frame: print(
                f"slmjobs.wrapper: ignoring {signal.Signals(signum).name}", flush=True))
    try:
        started.append(Command(argv, env))
    except (FileNotFoundError, PermissionError) as exc:
        print(f"error: cannot run {argv[0]!r}: {exc.strerror} (PATH={os.environ.get('PATH', '')}); "
              "allowed is a program on the job's PATH or a path to an executable file",
              file=sys.stderr, flush=True)
        return link.BAD_INPUT
    deadline = link.deadline()
    while True:
        timeout = None if deadline is None or sent else max(deadline - time.time(), 0.0)
        try:
            rc = started[0].process.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            send_stop("the deadline has come")
            if stop is None:
                deadline = None  # nothing to send: the command keeps its own time
    return handed_over(rc, stop, bool(sent))


def handed_over(rc: int, stop: signal.Signals | None, stop_sent: bool) -> int:
    """The link's exit status: the command's own, as a shell reports it (128 + a signal), except
    that after the stop signal was sent an exit 0 or a death by that very signal counts as
    handed off (75). A program that saves on a signal cannot tell us whether it finished: the
    next link resumes from its checkpoint and finds out."""
    status = 128 - rc if rc < 0 else rc
    if stop_sent and status in (0, 128 + int(stop)):
        print(f"slmjobs.wrapper: the command exited {status} after {stop.name}: handed off "
              f"(exit {link.HANDED_OFF}); the next link continues from its checkpoint", flush=True)
        return link.HANDED_OFF
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)  # the command is everything after
    parser = argparse.ArgumentParser(prog="python -m slmjobs.wrapper")
    parser.add_argument("run_dir")
    parser.add_argument("--stop-signal")
    parser.add_argument("--resume-glob")
    parser.add_argument("--ignore-warnings", action="store_true",
                        help="the scheduler's warnings do not send the stop signal")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    try:
        stop = stop_signal(args.stop_signal)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return link.BAD_INPUT
    if not command:
        print("error: no command to run: allowed is `-- CMD ARGS...`", file=sys.stderr)
        return link.BAD_INPUT
    return run(os.path.abspath(args.run_dir), command, stop, args.resume_glob,
               warnings_stop=not args.ignore_warnings)


if __name__ == "__main__":
    sys.exit(main())
