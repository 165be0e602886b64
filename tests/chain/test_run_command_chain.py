"""`slmjobs run -- CMD` chains for real: the README's examples (examples/*.py, these very files)
launched through the real CLI on the local backend and on the real Grid Engine.

- plain_count.py (no torch) with the contract: >= 3 links, its final state equal to an
  uninterrupted run's, no step done twice; the same with only a stop signal at the deadline;
- plain_count.py --save-every 5, which knows nothing of deadlines: h_rt kills every link, the
  next resumes from the newest --resume-glob match, and at most 4 steps are redone per link;
- lightning_fit.py and hf_train.py over >= 3 links: global_step contiguous from link to link and
  the final weights bitwise equal to an uninterrupted fit.

The chains sleep more than they compute (every step sleeps), so the module fixture launches them
all at once and each test waits for its own. Every count of links follows from the walltime,
never from the machine's speed: a link is at most (walltime - margin) seconds of steps (h_rt for
the scripts that ignore the deadline), each at least --step-seconds long.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from slmjobs import ledger, link

ROOT = Path(__file__).resolve().parents[2]  # the jobs' working directory: examples/ is there
EXAMPLES = ROOT / "examples"
LIMITS = {"max_links": 20, "crash_budget": 1, "no_progress_links": 3}

# (walltime, margin) and the most steps one link can take at STEP seconds a step.
SHORT = ("00:00:20", 8)      # local plain: deadline 12 s after start -> <= 24 steps of 0.5 s
SGE = ("00:00:30", 10)       # Grid Engine plain: deadline 20 s -> <= 40 steps; h_rt 30 s -> <= 60
LONG = ("00:01:30", 10)      # Lightning, HF (their imports take seconds): deadline 80 s -> <= 80 steps of 1 s
STEP, FRAMEWORK_STEP = 0.5, 1.0
PLAIN_TOTAL, SGE_TOTAL, EVERY_K = 50, 90, 5
KILLED_TOTAL_LOCAL, KILLED_TOTAL_SGE = 90, 130  # h_rt 20 s -> <= 40 steps; 30 s -> <= 60
FRAMEWORK_STEPS = 161


def most_steps(seconds: float, step: float) -> int:
    return int(seconds // step)


class Chains:
    """`slmjobs run` chains launched through the real CLI, and uninterrupted references."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.env = {**os.environ, "SLMJOBS_LOCAL_STATE": str(tmp / "local-state"),
                    "SLMJOBS_CACHE_DIR": str(tmp / "cache"), "SLMJOBS_CONFIG_DIR": str(tmp / "config"),
                    "SLMJOBS_RUNS_ROOT": str(tmp / "runs"), "OMP_NUM_THREADS": "1"}
        for name in ("SLMJOBS_DEADLINE", "SLMJOBS_LINK", "SLMJOBS_CLUSTER", "SLMJOBS_RUN_DIR",
                     "SLMJOBS_RESUME_FROM", "SLMJOBS_CHECKPOINT_DIR"):
            self.env.pop(name, None)
        self.launched: list[Path] = []
        self.references: dict[str, subprocess.Popen] = {}

    def profile(self, name: str, scheduler: str, walltime_margin: tuple) -> str:
        walltime, margin = walltime_margin
        data = {"scheduler": scheduler, "max_gpus": 1, "walltime_default": walltime,
                "walltime_max": "01:00:00", "handoff_margin": margin, "chain": LIMITS,
                "env": {"OMP_NUM_THREADS": "1"}}
        if scheduler == "sge":
            data.update(pe="omp", cpus_per_gpu=1)
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    def cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "slmjobs", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    def run(self, name: str, cluster: str, *command, options=()) -> Path:
        proc = self.cli("run", "--cluster", cluster, "--cpus", "1", "--name", name, *options,
                        "--", *command)
        assert proc.returncode == 0, proc.stderr
        run_dir = self.tmp / "runs" / name
        self.launched.append(run_dir)
        return run_dir

    def reference(self, name: str, *command) -> None:
        """The same command, uninterrupted: no slmjobs variables, no deadline."""
        log = open(self.tmp / f"{name}.log", "w")
        self.references[name] = subprocess.Popen(command, env=self.env, cwd=self.tmp, stdout=log,
                                                  stderr=subprocess.STDOUT)

    def reference_done(self, name: str) -> None:
        assert self.references[name].wait(timeout=900) == 0, (self.tmp / f"{name}.log").read_text()[-3000:]

    def status(self, run_dir: Path) -> dict:
        (row,) = json.loads(self.cli("status", str(run_dir), "--json").stdout)
        return row

    def wait_over(self, run_dir: Path, wait_until, timeout=900) -> list[dict]:
        def over():
            row = self.status(run_dir)
            return row["state"] in ("finished", "stopped", "failed", "cancelled") \
                and row["job_state"] not in ("queued", "held", "running")
        wait_until(over, timeout, f"{run_dir.name} to be over", interval=2.0)
        return ledger.read(run_dir)

    def close(self) -> None:
        for run_dir in self.launched:
            self.cli("cancel", str(run_dir))
        for reference in self.references.values():
            if reference.poll() is None:
                reference.kill()


def plain(*args) -> list[str]:
    return ["python", str(EXAMPLES / "plain_count.py"), *map(str, args)]


def killed_every_link(total: int, steps_log: Path) -> list[str]:
    """plain_count.py in its deadline-blind form: it is told where to resume on its command
    line, as such scripts usually are, through the shell."""
    line = (f'exec python {EXAMPLES / "plain_count.py"} --total {total} --step-seconds {STEP} '
            f'--save-every {EVERY_K} --steps-log {steps_log} '
            '${SLMJOBS_RESUME_FROM:+--resume "$SLMJOBS_RESUME_FROM"}')
    return ["sh", "-c", line]


@pytest.fixture(scope="module")
def command_chains(tmp_path_factory, sge_cluster):
    tmp = tmp_path_factory.mktemp("run-command")
    c = Chains(tmp)
    tag = uuid.uuid4().hex[:6]
    short, long = c.profile("short", "local", SHORT), c.profile("long", "local", LONG)
    sge = c.profile("sge", "sge", SGE)
    c.logs = {key: tmp / f"{key}.steps" for key in ("local", "sge", "signal", "killed-local", "killed-sge")}
    c.plain_local = c.run(f"plain-local-{tag}", short, *plain(
        "--total", PLAIN_TOTAL, "--step-seconds", STEP, "--steps-log", c.logs["local"]))
    c.plain_sge = c.run(f"plain-sge-{tag}", sge, *plain(
        "--total", SGE_TOTAL, "--step-seconds", STEP, "--steps-log", c.logs["sge"]))
    # Deaf to the deadline (its variable emptied for it): only the wrapper's signal stops it.
    c.signalled = c.run(f"signalled-{tag}", short, "env", "SLMJOBS_DEADLINE=", *plain(
        "--total", PLAIN_TOTAL, "--step-seconds", STEP, "--steps-log", c.logs["signal"]),
        options=("--stop-signal", "USR1"))
    c.killed_local = c.run(f"killed-local-{tag}", short, *killed_every_link(
        KILLED_TOTAL_LOCAL, c.logs["killed-local"]),
        options=("--resume-glob", str(tmp / "runs" / f"killed-local-{tag}" / "checkpoints" / "step-*.json")))
    c.killed_sge = c.run(f"killed-sge-{tag}", sge, *killed_every_link(
        KILLED_TOTAL_SGE, c.logs["killed-sge"]),
        options=("--resume-glob", str(tmp / "runs" / f"killed-sge-{tag}" / "checkpoints" / "step-*.json")))
    c.stuck = c.run(f"stuck-{tag}", short, "python", "-c", "import time; time.sleep(600)")
    c.lightning = c.run(f"lightning-{tag}", long, "python", str(EXAMPLES / "lightning_fit.py"),
                        "--max-steps", str(FRAMEWORK_STEPS), "--step-seconds", str(FRAMEWORK_STEP),
                        "--weights", str(tmp / "lightning-chain.pt"))
    c.hf = c.run(f"hf-{tag}", long, "python", str(EXAMPLES / "hf_train.py"),
                 "--max-steps", str(FRAMEWORK_STEPS), "--step-seconds", str(FRAMEWORK_STEP),
                 "--weights", str(tmp / "hf-chain.pt"))
    for total in sorted({PLAIN_TOTAL, SGE_TOTAL, KILLED_TOTAL_LOCAL, KILLED_TOTAL_SGE}):
        c.reference(f"plain-{total}", sys.executable,
                    *plain("--total", total, "--ckpt-dir", tmp / f"plain-{total}")[1:])
    c.reference("lightning", sys.executable, str(EXAMPLES / "lightning_fit.py"), "--max-steps",
                str(FRAMEWORK_STEPS), "--weights", str(tmp / "lightning-reference.pt"))
    c.reference("hf", sys.executable, str(EXAMPLES / "hf_train.py"), "--max-steps",
                str(FRAMEWORK_STEPS), "--weights", str(tmp / "hf-reference.pt"))
    yield c
    c.close()


# ------------------------------------------------------------------ what is read back
def steps_by_link(steps_log: Path) -> list[tuple[int, int]]:
    """(link, step) for every step done, in the order done."""
    return [tuple(map(int, line.split())) for line in steps_log.read_text().splitlines() if line.strip()]


def links_started(evs: list[dict]) -> int:
    return len([e for e in evs if e.get("event") == "started"])


def stop_reasons(evs: list[dict]) -> list[str]:
    return [e["reason"] for e in evs if e.get("event") == "stopped"]


def final_state(checkpoint: Path) -> dict:
    return json.loads(checkpoint.read_text())


def reference_state(chains: Chains, total: int) -> dict:
    chains.reference_done(f"plain-{total}")
    return final_state(chains.tmp / f"plain-{total}" / f"state-{total:06d}.json")


def assert_plain_chain(chains: Chains, run_dir: Path, steps_log: Path, total: int, per_link: int,
                       wait_until) -> list[dict]:
    evs = chains.wait_over(run_dir, wait_until)
    assert stop_reasons(evs) == ["finished"], evs
    assert links_started(evs) >= max(3, math.ceil(total / per_link))
    done = steps_by_link(steps_log)
    assert [step for _, step in done] == list(range(1, total + 1))  # each step once, in order
    declared = link.declared_checkpoint(str(run_dir))
    assert declared["step"] == total
    assert final_state(Path(declared["path"])) == reference_state(chains, total)
    return evs


# ------------------------------------------------------------------ the tests
def test_a_plain_script_chains_over_three_links_locally_and_equals_an_uninterrupted_run(
        command_chains, wait_until):
    evs = assert_plain_chain(command_chains, command_chains.plain_local, command_chains.logs["local"],
                             PLAIN_TOTAL, most_steps(20 - 8, STEP), wait_until)
    handed = [e for e in evs if e["event"] == "ended" and e["how"] == "handed_off"]
    assert len(handed) >= 2 and [e["progress"] for e in handed] == sorted(e["progress"] for e in handed)
    row = command_chains.status(command_chains.plain_local)
    assert (row["state"], row["step"], row["max_steps"], row["declared_step"]) == \
        ("finished", PLAIN_TOTAL, PLAIN_TOTAL, PLAIN_TOTAL)
    table = command_chains.cli("status", str(command_chains.plain_local)).stdout.splitlines()
    assert "CKPT" in table[0].split() and f"{PLAIN_TOTAL}/{PLAIN_TOTAL}" in table[1]


def test_a_plain_script_chains_over_three_links_on_grid_engine(command_chains, wait_until):
    assert_plain_chain(command_chains, command_chains.plain_sge, command_chains.logs["sge"],
                       SGE_TOTAL, most_steps(30 - 10, STEP), wait_until)
    script = (command_chains.plain_sge / "scripts" / "link-001.sh").read_text()
    assert "#$ -pe omp 1" in script.splitlines()


def test_a_script_that_only_reacts_to_a_signal_gets_it_at_the_deadline(command_chains, wait_until):
    evs = assert_plain_chain(command_chains, command_chains.signalled, command_chains.logs["signal"],
                             PLAIN_TOTAL, most_steps(20 - 8, STEP), wait_until)
    logs = "".join(p.read_text() for p in sorted((command_chains.signalled / "logs").glob("*.log")))
    assert "the deadline has come: sending SIGUSR1" in logs and "received SIGUSR1" in logs
    assert "deadline in" not in logs  # it never saw the deadline itself


@pytest.mark.parametrize("where", ["local", "sge"])
def test_a_script_blind_to_deadlines_is_killed_every_link_and_still_finishes(
        command_chains, wait_until, where):
    run_dir = {"local": command_chains.killed_local, "sge": command_chains.killed_sge}[where]
    total = {"local": KILLED_TOTAL_LOCAL, "sge": KILLED_TOTAL_SGE}[where]
    h_rt = {"local": 20, "sge": 30}[where]
    evs = command_chains.wait_over(run_dir, wait_until)
    assert stop_reasons(evs) == ["finished"], evs
    ended = [e for e in evs if e["event"] == "ended" and e["how"] != "cancelled"]
    assert links_started(evs) >= max(3, math.ceil(total / most_steps(h_rt, STEP)))
    assert [e["how"] for e in ended] == ["killed"] * (len(ended) - 1) + ["finished"], ended
    # it declared nothing: its progress is the last change under its checkpoint directory
    assert link.declared_checkpoint(str(run_dir)) == {}
    assert [e["progress"] for e in ended] == sorted(e["progress"] for e in ended)
    done = steps_by_link(command_chains.logs[f"killed-{where}"])
    links = [k for k, _ in done]
    assert links == sorted(links)  # no link's command outlived it: links never interleave
    by_link: dict[int, list[int]] = {}
    for k, step in done:
        by_link.setdefault(k, []).append(step)
    steps = list(by_link.values())
    for before, after in zip(steps, steps[1:]):
        assert after == list(range(after[0], after[-1] + 1))
        redone = before[-1] - after[0] + 1
        assert 0 <= redone <= EVERY_K - 1, (before[-1], after[0])
    assert steps[-1][-1] == total
    final = run_dir / "checkpoints" / f"step-{total:06d}.json"
    assert final_state(final) == reference_state(command_chains, total)


def test_a_command_that_changes_nothing_is_stopped_by_the_no_progress_guard(command_chains, wait_until):
    evs = command_chains.wait_over(command_chains.stuck, wait_until)
    assert stop_reasons(evs) == ["no_progress"]
    assert links_started(evs) == LIMITS["no_progress_links"] + 1  # the last one only stops it


@pytest.mark.parametrize("framework", ["lightning", "hf"])
def test_a_framework_script_chains_over_three_links_with_bitwise_equal_weights(
        command_chains, wait_until, framework):
    run_dir = getattr(command_chains, framework)
    evs = command_chains.wait_over(run_dir, wait_until, timeout=1500)
    assert stop_reasons(evs) == ["finished"], evs
    assert links_started(evs) >= max(3, math.ceil(FRAMEWORK_STEPS / most_steps(90 - 10, FRAMEWORK_STEP)))
    starts, stops = [], []
    for log in sorted((run_dir / "logs").glob("link-*.log")):
        text = log.read_text()
        starts += [int(s) for s in re.findall(rf"slmjobs.{framework}: training from global_step (\d+)", text)]
        stops += [int(s) for s in re.findall(rf"slmjobs.{framework}: handed off at global_step (\d+)", text)]
    assert starts[0] == 0 and starts[1:] == stops and len(stops) >= 2  # contiguous
    command_chains.reference_done(framework)
    chained = torch.load(command_chains.tmp / f"{framework}-chain.pt")
    reference = torch.load(command_chains.tmp / f"{framework}-reference.pt")
    assert chained.keys() == reference.keys()
    assert all(torch.equal(chained[k], reference[k]) for k in reference)
