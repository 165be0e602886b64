"""A plain Python training loop (no torch) that rides `slmjobs run`: it counts steps, folds each
into a running state, saves a JSON checkpoint when its deadline nears and exits 75; the next
link resumes from the checkpoint it declared. Alone (no slmjobs) it simply runs to the end.

    slmjobs run --cpus 1 --walltime 00:10:00 -- python examples/plain_count.py --total 1000

With --save-every K it is the other kind of script, one that knows nothing of deadlines: it
saves every K steps and is killed at every walltime; `--resume-glob` finds its newest save:

    slmjobs run --cpus 1 --resume-glob 'runs/NAME/checkpoints/step-*.json' -- \\
        sh -c 'exec python examples/plain_count.py --total 1000 --save-every 10 \\
               ${SLMJOBS_RESUME_FROM:+--resume "$SLMJOBS_RESUME_FROM"}'
"""

import argparse
import json
import os
import sys
import time

from slmjobs import link


def fold(state: int, step: int) -> int:
    """One training step: any deterministic function of the state and the step."""
    return (state * 6364136223846793005 + step) % (1 << 61)


def save(path: str, step: int, state: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump({"step": step, "state": state}, handle)
    os.replace(tmp, path)  # a kill mid-save leaves the previous file whole


def load(path):
    if not path:
        return 0, 0
    with open(path) as handle:
        saved = json.load(handle)
    return saved["step"], saved["state"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--step-seconds", type=float, default=0.0, help="sleep per step")
    parser.add_argument("--ckpt-dir", default=link.checkpoint_dir() or "checkpoints")
    parser.add_argument("--steps-log", help="append 'link step' for every step done")
    parser.add_argument("--save-every", type=int, help="save every K steps, ignore the deadline")
    parser.add_argument("--resume", help="checkpoint to resume from (--save-every mode)")
    args = parser.parse_args()
    if args.total < 1:
        print(f"error: --total {args.total}: allowed is 1 or more", file=sys.stderr)
        return link.BAD_INPUT
    os.makedirs(args.ckpt_dir, exist_ok=True)
    handoff = None if args.save_every else link.HandOff(save_seconds_guess=0.5)
    step, state = load(args.resume if args.save_every else link.resume_from())
    print(f"starting at step {step}", flush=True)
    log = open(args.steps_log, "a") if args.steps_log else None
    while step < args.total:
        if handoff and handoff.time_to_stop():
            break
        time.sleep(args.step_seconds)
        step += 1
        state = fold(state, step)
        if log:
            log.write(f"{os.environ.get('SLMJOBS_LINK', '0')} {step}\n")
            log.flush()
        if handoff:
            link.heartbeat(step, args.total)
        if args.save_every and (step % args.save_every == 0 or step == args.total):
            save(os.path.join(args.ckpt_dir, f"step-{step:06d}.json"), step, state)
    if not args.save_every:
        path = os.path.join(args.ckpt_dir, f"state-{step:06d}.json")
        with handoff.saving():
            save(path, step, state)
        link.checkpoint_done(path, step)
    print(f"step {step}/{args.total} state {state}", flush=True)
    return link.exit_status(finished=step >= args.total)


if __name__ == "__main__":
    sys.exit(main())
