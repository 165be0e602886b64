"""What a chain link costs: start-up, hand-off save, share of walltime spent training, work lost.

    python benchmarks/bench_chain.py                      # launch two chains on the test SGE, measure
    python benchmarks/bench_chain.py --links 6 --walltime 00:01:30
    python benchmarks/bench_chain.py --analyse RUN_DIR... # chains run earlier by this script

It launches, through the real CLI on the single-node Grid Engine, the tiny model on CPU:
  planned  -- hand-offs at the deadline (h_rt - margin), sized to need about --links links;
  hardkill -- the same with no deadline reaching the worker, so h_rt SIGKILLs every link and the
              next one resumes from the last periodic checkpoint.
While they run it samples each run's progress.json every 0.5 s into `<run>/bench-progress.jsonl`
(progress.json is rewritten by every link; the samples keep each link's own values), then reads
those samples, the ledger (jobs.jsonl) and the link logs, and prints per link:

  startup_s   job start (SLMJOBS_JOB_START, whole seconds) -> end of the first training step
              (imports, model, data, checkpoint load, one batch); without progress samples,
              from the log's whole-second stamps: banner -> the data loader's first read
  save_s      time to write the hand-off checkpoint (trainer's own measurement)
  train_s     first step -> the last step of the link;   train_%: train_s / h_rt
  lost        batches trained after the checkpoint the next link resumed from (recomputed work;
              the log has a line per batch, so the last batch a killed link finished is known)
  samples     samples the data loader read to start the link (no replay: one batch)

and the early-vs-late comparison of start-up (does the overhead grow with the position?).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slmjobs import ledger  # noqa: E402
from slmjobs.events import ended_links, started_links, stop_reason, trained_links  # noqa: E402

CLI = [sys.executable, "-c", "import sys; from slmjobs.cli import main; sys.exit(main())"]
SAVE_EVERY = 10
SLEEP = 0.65
_RESUMED = re.compile(r"resumed from \S+ at step (\d+)/")
_SAMPLES = re.compile(r"data: (\d+) samples read to start this link at step (\d+)")
_STEP_LINE = re.compile(r"\] step (\d+)/")
_BANNER = re.compile(r"^slmjobs: run \S+ link \d+ job \S+ on \S+ at (.+?), deadline", re.M)
_STAMP = r"^\[(\d\d:\d\d:\d\d)\] "
_FIRST_BATCH = re.compile(_STAMP + r"data: \d+ samples read", re.M)
_HANDED = re.compile(_STAMP + r"(?:handed off|finished): step|" + _STAMP + r"handed off at step", re.M)
_SAVE = re.compile(r"checkpoint step (\d+) -> \S+ \(([\d.]+) s\)")


# ------------------------------------------------------------------------------ running
def profile_yaml(walltime: str, margin: int, env: dict) -> str:
    import yaml

    return yaml.safe_dump({
        "scheduler": "sge", "description": "bench: short links", "max_gpus": 4,
        "gpu_resource": "gpus", "pe": "omp", "cpus_per_gpu": 1, "walltime_default": walltime,
        "walltime_max": "01:00:00", "handoff_margin": margin,
        "env": {"OMP_NUM_THREADS": "1", **env},
        "chain": {"max_links": 40, "crash_budget": 3, "no_progress_links": 3}})


def sample_progress(run_dirs: list[Path], stop: threading.Event) -> None:
    """Keep every distinct progress.json state of every run (each link overwrites the last)."""
    last = {d: None for d in run_dirs}
    while not stop.is_set():
        for run_dir in run_dirs:
            try:
                text = (run_dir / "progress.json").read_text()
            except OSError:
                continue
            if text != last[run_dir]:
                last[run_dir] = text
                with open(run_dir / "bench-progress.jsonl", "a") as out:
                    out.write(text.strip() + "\n")
        stop.wait(0.5)


def launch_and_wait(args) -> list[Path]:
    root = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    env = {**os.environ, "SLMJOBS_RUNS_ROOT": str(root / "runs"),
           "SLMJOBS_CONFIG_DIR": str(root / "config"), "OMP_NUM_THREADS": "1"}
    data = root / "data"
    subprocess.run([sys.executable, "-m", "trainer.prepare", "--source", "builtin",
                    "--max-documents", "40", "--out", str(data)], check=True, capture_output=True)
    walltime = chain_seconds(args.walltime)
    # sized so that a link that starts in ~30 s trains ~(h_rt - margin - 30) s: about --links links
    steps = int(args.links * (walltime - args.margin - 30) / (SLEEP + 0.3))
    training = [f"data.path={data}", f"train.max_steps={steps}", "train.global_batch_size=4",
                "train.eval_every=0", "train.eval_batches=2", "train.log_every=1",
                "train.progress_every_seconds=1",
                f"checkpoint.save_every_batches={SAVE_EVERY}", "checkpoint.save_every_seconds=0",
                "checkpoint.keep=2", "data.num_workers=0", "wandb.enabled=false",
                f"train.debug_batch_sleep={SLEEP}"]
    runs = []
    for name, extra_env in (("planned", {}), ("hardkill", {"SLMJOBS_DEADLINE": ""})):
        profile = root / f"{name}.yaml"
        profile.write_text(profile_yaml(args.walltime, args.margin, extra_env))
        subprocess.run([*CLI, "launch", "tiny", "--cluster", str(profile), "--name", name,
                        *training], env=env, cwd=root, check=True, capture_output=True)
        runs.append(root / "runs" / name)
        time.sleep(30)  # let its first link start alone (start-up is CPU-bound)
    print(f"launched {len(runs)} chains of {steps} steps under {root}; h_rt {args.walltime}",
          flush=True)
    stop = threading.Event()
    sampler = threading.Thread(target=sample_progress, args=(runs, stop), daemon=True)
    sampler.start()
    try:
        for run_dir in runs:
            while stop_reason(ledger.read(run_dir)) is None:
                time.sleep(2)
    finally:
        stop.set()
        sampler.join()
        for run_dir in runs:
            if stop_reason(ledger.read(run_dir)) is None:
                subprocess.run([*CLI, "cancel", run_dir.name], env=env, capture_output=True)
    subprocess.run([*CLI, "status"], env=env)  # also records each job's accounting
    return runs


def chain_seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s


# ------------------------------------------------------------------------------ analysis
def samples_by_link(run_dir: Path) -> dict[int, list[dict]]:
    found: dict[int, list[dict]] = {}
    path = run_dir / "bench-progress.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                sample = json.loads(line)
            except ValueError:
                continue
            if isinstance(sample.get("link"), int):
                found.setdefault(sample["link"], []).append(sample)
    return found


def log_facts(run_dir: Path, link: int) -> dict:
    path = run_dir / "logs" / f"link-{link:03d}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    resumed = _RESUMED.findall(text)
    samples = _SAMPLES.findall(text)
    steps = _STEP_LINE.findall(text)
    facts = {"start_step": int(resumed[-1]) if resumed else 0,
             "samples_read": int(samples[-1][0]) if samples else None,
             "last_logged_step": int(steps[-1]) if steps else None,
             "job_start": None, "first_batch": None, "stopped": None, "saves": {}}
    # Whole-second times from the log (used when no progress samples were taken): the job
    # script's banner, the data loader's first read, the trainer's hand-off/finish line.
    banner = _BANNER.search(text)
    if banner:
        try:
            start = time.mktime(time.strptime(banner.group(1).strip(), "%a %b %d %H:%M:%S %Z %Y"))
        except ValueError:
            start = None
        if start:
            facts["job_start"] = start
            day = time.strftime("%Y-%m-%d ", time.localtime(start))

            def stamp(match):
                if not match:
                    return None
                clock = next(g for g in match.groups() if g)
                return time.mktime(time.strptime(day + clock, "%Y-%m-%d %H:%M:%S"))

            facts["first_batch"] = stamp(_FIRST_BATCH.search(text))
            facts["stopped"] = stamp(_HANDED.search(text))
    facts["saves"] = {int(step): float(sec) for step, sec in _SAVE.findall(text)}
    return facts


def analyse(run_dir: Path) -> list[dict]:
    import yaml

    run = yaml.safe_load((run_dir / "run.yaml").read_text())
    h_rt = chain_seconds(run["walltime"])
    events = ledger.read(run_dir)
    ended = ended_links(events)
    accounted = {str(e.get("job_id")): e for e in events if e.get("event") == "accounted"}
    samples = samples_by_link(run_dir)
    trained = trained_links(events)  # not those that found the run finished or stopped
    rows = []
    for link, start in sorted(started_links(events).items()):
        end = ended.get(link, {})
        if link not in trained:
            continue
        seen = samples.get(link, [])
        last = seen[-1] if seen else {}
        facts = log_facts(run_dir, link)
        reached = max([s.get("step") or 0 for s in seen] + [facts["last_logged_step"] or 0,
                                                             end.get("step") or 0])
        following = [k for k in trained if k > link]
        resumed_by_next = log_facts(run_dir, following[0])["start_step"] if following else None
        first = last.get("first_step_at") or facts["first_batch"]
        started = last.get("link_started_at") or facts["job_start"]
        finished_at = (last.get("updated_at") if last.get("state") in ("handed_off", "finished")
                       else None) or facts["stopped"]
        save = last.get("last_save_seconds") if last.get("state") in ("handed_off", "finished") \
            else facts["saves"].get(end.get("checkpoint_step")) if facts["stopped"] else None
        row = {
            "link": link, "how": end.get("how"), "start_step": facts["start_step"],
            "reached": max(reached, facts["start_step"]),
            "checkpoint_step": end.get("checkpoint_step"),
            "startup_s": (first - started) if first and started else None,
            "save_s": save,
            "train_s": (finished_at - first) if finished_at and first else None,
            "wallclock_s": accounted.get(str(start.get("job_id")), {}).get("wallclock"),
            "samples_read": facts["samples_read"],
            "lost": (reached - resumed_by_next) if resumed_by_next is not None else None,
        }
        row["train_pct"] = 100 * row["train_s"] / h_rt if row["train_s"] else None
        rows.append(row)
    return rows


def fmt(value, spec="") -> str:
    return "-" if value is None else format(value, spec)


def report(run_dir: Path) -> None:
    rows = analyse(run_dir)
    print(f"\n== {run_dir.name}: {len(rows)} links ({run_dir})")
    print(f"{'link':>4} {'how':<10} {'from':>5} {'to':>5} {'startup_s':>9} {'save_s':>7} "
          f"{'train_s':>7} {'train_%':>7} {'wall_s':>6} {'samples':>7} {'lost':>4}")
    for r in rows:
        print(f"{r['link']:>4} {fmt(r['how']):<10} {r['start_step']:>5} {r['reached']:>5} "
              f"{fmt(r['startup_s'], '.1f'):>9} {fmt(r['save_s'], '.2f'):>7} "
              f"{fmt(r['train_s'], '.1f'):>7} {fmt(r['train_pct'], '.0f'):>7} "
              f"{fmt(r['wallclock_s'], '.0f'):>6} {fmt(r['samples_read']):>7} {fmt(r['lost']):>4}")
    startups = [r["startup_s"] for r in rows if r["startup_s"] is not None]
    if len(startups) >= 3:
        half = len(startups) // 2
        print(f"startup early links (median of first {half}): "
              f"{statistics.median(startups[:half]):.1f} s; late links (median of last {half}): "
              f"{statistics.median(startups[-half:]):.1f} s")
    handoffs = [r["lost"] for r in rows if r["how"] == "handed_off" and r["lost"] is not None]
    kills = [r["lost"] for r in rows if r["how"] == "killed" and r["lost"] is not None]
    if handoffs:
        print(f"work lost per planned hand-off: {handoffs} batches (max {max(handoffs)})")
    if kills:
        print(f"work lost per hard kill: {kills} batches (max {max(kills)}, checkpoint "
              f"interval {SAVE_EVERY})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--analyse", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--walltime", default="00:02:00")
    parser.add_argument("--margin", type=int, default=30)
    parser.add_argument("--links", type=int, default=5)
    args = parser.parse_args()
    runs = args.analyse or launch_and_wait(args)
    for run_dir in runs:
        report(run_dir)


if __name__ == "__main__":
    main()
