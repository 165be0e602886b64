"""A kind of run defined in this test file alone (one module, nothing else edited): a counter
that counts one a second up to a target, saves its count when its deadline nears and exits 75,
and says its progress in a status column of its own. It rides the real chain: on the real Grid
Engine over 3 links, and on the local backend for what happens when a run is over (one mail,
a run that waits for another) and for two commands racing to resume it.

The chains sleep more than they compute, so the module fixture launches them all at once and
each test waits for its own. Every count of links follows from the walltime, never from the
machine's speed: a link counts at most (walltime - margin) seconds, one per second.

Run as `python -m test_kind_plugin RUN_DIR TARGET ok|fail`, this module is the worker.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from slmjobs import kinds, ledger, rundir
from slmjobs.table import Column, out_of

MODULE = "test_kind_plugin"
HERE = Path(__file__).resolve().parent  # the jobs' working directory: the kind imports there
MAILBOX = Path("/var/mail/slmjobs-mail")  # scripts/mail-up.sh
MAIL_TO = "slmjobs-mail@localhost"


# ------------------------------------------------------------------ the kind
class Counter(kinds.Kind):
    name = MODULE
    progress_name = "count"
    gpus_default = 0  # a CPU-only job
    columns = (Column("COUNT", "count", out_of("count", "target")),)

    def spec_fields(self, options, profile):
        return {"target": int(options["target"]), "fail": bool(options.get("fail"))}

    def command(self, spec):
        return kinds.Command(f'"$SLMJOBS_PYTHON" -m {MODULE}',
                             [spec["run_dir"], str(spec["target"]), "fail" if spec["fail"] else "ok"])

    def durable_progress(self, run_dir):
        return saved_count(run_dir)

    def finished_trace(self, run_dir):
        spec = rundir.load_run(run_dir)
        return (saved_count(run_dir) or 0) >= spec["target"]

    def status(self, run_dir, progress):
        return {"count": saved_count(run_dir), "target": rundir.load_run(run_dir)["target"]}


KIND = Counter()


def saved_count(run_dir) -> int | None:
    try:
        return json.loads((Path(run_dir) / "count.json").read_text())["count"]
    except (OSError, ValueError, KeyError):
        return None


def count(run_dir: str, target: int, fail: bool) -> int:
    """The worker: one a second until the target (exit 0) or the deadline (save, exit 75)."""
    if fail:
        print("error: this counter was told to fail", file=sys.stderr)
        return 1
    n = saved_count(run_dir) or 0
    deadline = float(os.environ.get("SLMJOBS_DEADLINE") or "inf")
    while n < target and time.time() + 1.5 < deadline:
        time.sleep(1)
        n += 1
    path = Path(run_dir) / "count.json"
    path.with_suffix(".tmp").write_text(json.dumps({"count": n}))
    os.replace(path.with_suffix(".tmp"), path)
    print(f"counted to {n}/{target}")
    return 0 if n >= target else 75


# ------------------------------------------------------------------ launching them
def profile(tmp: Path, name: str, scheduler: str, walltime: str, margin: int, **extra) -> str:
    data = {"scheduler": scheduler, "max_gpus": 1, "walltime_default": walltime,
            "walltime_max": "01:00:00", "handoff_margin": margin, "runs_root": str(tmp / "runs"),
            "chain": {"max_links": 20, "crash_budget": 1, "no_progress_links": 3}, **extra}
    if scheduler == "sge":
        data.update(pe="omp", cpus_per_gpu=1)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


class Runs:
    """Counter runs launched with the real API, watched and steered through the real CLI."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.env = {**os.environ, "SLMJOBS_LOCAL_STATE": str(tmp / "local-state"),
                    "SLMJOBS_CACHE_DIR": str(tmp / "cache"), "SLMJOBS_CONFIG_DIR": str(tmp / "config")}
        for name in ("SLMJOBS_RUNS_ROOT", "SLMJOBS_DEADLINE", "SLMJOBS_LINK", "SLMJOBS_CLUSTER"):
            self.env.pop(name, None)
        self.launched: list[Path] = []

    def launch(self, name: str, cluster: str, target: int, *, fail=False, after=None, cpus=None) -> Path:
        code = ("import sys; from slmjobs.launch import Request, launch; "
                "r = launch(Request(kind=sys.argv[1], options={'target': int(sys.argv[2]), "
                "'fail': sys.argv[3] == 'fail'}, cluster=sys.argv[4], name=sys.argv[5], "
                "after=sys.argv[6] or None, cpus=int(sys.argv[7]) if sys.argv[7] else None)); "
                "print(r['run_dir'])")
        proc = subprocess.run([sys.executable, "-c", code, MODULE, str(target),
                               "fail" if fail else "ok", cluster, name, str(after or ""),
                               str(cpus or "")], env=self.env, cwd=HERE, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        run_dir = Path(proc.stdout.strip().splitlines()[-1])
        self.launched.append(run_dir)
        return run_dir

    def cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "slmjobs", *args], env=self.env, cwd=HERE,
                              capture_output=True, text=True, timeout=120)

    def status(self, run_dir: Path) -> dict:
        proc = self.cli("status", str(run_dir), "--json")
        (row,) = json.loads(proc.stdout)
        return row

    def wait_over(self, run_dir: Path, wait_until, timeout=600) -> list[dict]:
        """Until the run is over and nothing of it is queued or running (status concludes a run
        whose last link was killed before its hook, so it is asked every few seconds)."""
        def over():
            row = self.status(run_dir)
            return row["state"] in ("finished", "stopped", "failed", "cancelled") \
                and row["job_state"] not in ("queued", "held", "running")
        wait_until(over, timeout, f"{run_dir.name} to be over", interval=2.0)
        return ledger.read(run_dir)

    def close(self):
        for run_dir in self.launched:
            self.cli("cancel", str(run_dir))


def mails_about(name: str) -> list[str]:
    """The mails in the test mailbox whose subject names run `name`."""
    try:
        text = MAILBOX.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [m for m in text.split("\nFrom ") if f"Subject: slmjobs: run {name} " in m]


def links_of(evs: list[dict]) -> int:
    return len([e for e in evs if e.get("event") == "started"])


# GE: 1-minute links, 20 s margin: a link counts at most 40, so 90 needs at least 3 links.
SGE_WALLTIME, SGE_MARGIN, SGE_TARGET = "00:01:00", 20, 90
# local: 20 s links, 8 s margin: a link counts at most 12, so 50 needs at least 5 links.
LOCAL_WALLTIME, LOCAL_MARGIN, LOCAL_TARGET = "00:00:20", 8, 50


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sge_cluster):
    tmp = tmp_path_factory.mktemp("kind")
    r = Runs(tmp)
    tag = uuid.uuid4().hex[:6]  # the mailbox outlives test runs: names must be new ones
    sge = profile(tmp, "sge", "sge", SGE_WALLTIME, SGE_MARGIN)
    local = profile(tmp, "local", "local", LOCAL_WALLTIME, LOCAL_MARGIN, mail_user=MAIL_TO)
    quiet = profile(tmp, "quiet", "local", LOCAL_WALLTIME, LOCAL_MARGIN)
    r.sge_chain = r.launch(f"count-sge-{tag}", sge, SGE_TARGET, cpus=2)
    r.mailed = r.launch(f"count-mail-{tag}", local, LOCAL_TARGET)
    r.crashing = r.launch(f"count-crash-{tag}", local, 5, fail=True)
    r.first = r.launch(f"count-first-{tag}", quiet, 3)
    r.second = r.launch(f"count-second-{tag}", quiet, 3, after=r.first)
    r.broken = r.launch(f"count-broken-{tag}", quiet, 3, fail=True)
    r.orphan = r.launch(f"count-orphan-{tag}", quiet, 3, after=r.broken)
    r.racers = {"local": r.launch(f"count-race-local-{tag}", quiet, 10_000),
                "sge": r.launch(f"count-race-sge-{tag}", sge, 10_000)}
    yield r
    r.close()


# ------------------------------------------------------------------ the tests
def test_a_cpu_only_kind_asks_for_no_gpu_and_its_own_slots(runs):
    script = (runs.sge_chain / "scripts" / "link-001.sh").read_text()
    assert "#$ -pe omp 2" in script.splitlines()
    assert not [line for line in script.splitlines() if line.startswith("#$ -l gpus")]
    assert f'"$SLMJOBS_PYTHON" -m {MODULE}' in script


def test_the_kind_chains_over_three_links_on_grid_engine_with_its_own_column(runs, wait_until):
    evs = runs.wait_over(runs.sge_chain, wait_until, timeout=900)
    assert [e["reason"] for e in evs if e["event"] == "stopped"] == ["finished"]
    assert links_of(evs) >= math.ceil(SGE_TARGET / (60 - SGE_MARGIN))
    handed = [e for e in evs if e["event"] == "ended" and e["how"] == "handed_off"]
    assert [e["progress"] for e in handed] == sorted(e["progress"] for e in handed)  # it moved on
    assert saved_count(runs.sge_chain) == SGE_TARGET
    table = runs.cli("status", str(runs.sge_chain)).stdout.splitlines()
    assert "COUNT" in table[0].split() and "STEP" not in table[0].split()
    assert f"{SGE_TARGET}/{SGE_TARGET}" in table[1]


def test_a_run_that_finishes_over_five_links_sends_one_mail(runs, wait_until):
    evs = runs.wait_over(runs.mailed, wait_until)
    assert links_of(evs) >= math.ceil(LOCAL_TARGET / (20 - LOCAL_MARGIN))
    wait_until(lambda: mails_about(runs.mailed.name), 60, "the mail")
    time.sleep(2)  # a second mail, if one were coming, would be on its way by now
    (mail,) = mails_about(runs.mailed.name)
    assert f"Subject: slmjobs: run {runs.mailed.name} finished" in mail
    assert str(runs.mailed) in mail


def test_a_run_stopped_by_a_guard_sends_one_mail_that_says_how_to_continue(runs, wait_until):
    evs = runs.wait_over(runs.crashing, wait_until)
    assert [e["reason"] for e in evs if e["event"] == "stopped"] == ["crash_budget"]
    wait_until(lambda: mails_about(runs.crashing.name), 60, "the mail")
    time.sleep(2)
    (mail,) = mails_about(runs.crashing.name)
    assert "stopped (crash_budget)" in mail
    assert f"slmjobs resume {runs.crashing.name}" in mail


def test_a_run_that_waits_starts_when_the_other_finishes(runs, wait_until):
    runs.wait_over(runs.first, wait_until)
    evs = runs.wait_over(runs.second, wait_until)
    assert [e["reason"] for e in evs if e["event"] == "stopped"] == ["finished"]
    waiting_at, first_finish = evs[0]["time"], [
        e for e in ledger.read(runs.first) if e.get("reason") == "finished"][0]["time"]
    submitted = [e for e in evs if e["event"] == "submitted"]
    assert evs[0]["event"] == "waiting" and submitted[0]["time"] >= first_finish > waiting_at
    (action,) = [e for e in ledger.read(runs.first) if e["event"] == "action"]
    assert (action["action"], action["target"]) == ("submit", str(runs.second))


def test_a_run_waiting_on_a_stopped_run_says_so_and_nothing_is_queued(runs, wait_until):
    runs.wait_over(runs.broken, wait_until)
    row = runs.status(runs.orphan)
    assert row["state"] == "waiting" and row["job_id"] is None
    assert f"waiting for {runs.broken.name}, which stopped (crash_budget)" in \
        runs.cli("status", str(runs.orphan)).stdout
    assert f"slmjobs resume {runs.broken.name}" in runs.cli("status", str(runs.orphan)).stdout
    refused = runs.cli("resume", str(runs.orphan))
    assert refused.returncode == 2 and f"waits for run {runs.broken.name}" in refused.stderr
    assert runs.cli("cancel", str(runs.orphan)).returncode == 0
    assert runs.status(runs.orphan)["state"] == "cancelled"


@pytest.mark.parametrize("scheduler", ["local", "sge"])
def test_ten_resumes_at_once_make_exactly_one_new_link(runs, wait_until, scheduler):
    run_dir = runs.racers[scheduler]
    wait_until(lambda: any(e["event"] == "started" for e in ledger.read(run_dir)), 300,
               "link 1 to start")
    assert runs.cli("cancel", str(run_dir)).returncode == 0
    runs.wait_over(run_dir, wait_until)
    before = [e for e in ledger.read(run_dir) if e["event"] == "submitted"]
    racers = [subprocess.Popen([sys.executable, "-m", "slmjobs", "resume", str(run_dir)],
                               env=runs.env, cwd=HERE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(10)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in racers]
    assert sorted(rc for rc, _ in results) == [0] + [2] * 9, results
    assert all("still active" in err for rc, err in results if rc == 2), results
    # one link started by the resumes (its own `begin` then queues its successor, held on it)
    new = [e for e in ledger.read(run_dir) if e["event"] == "submitted"][len(before):]
    assert [e["hold_on"] for e in new if e["hold_on"] is None] == [None], new
    assert len([e for e in ledger.read(run_dir) if e["event"] == "resumed"]) == 1
    runs.cli("cancel", str(run_dir))


if __name__ == "__main__":
    sys.exit(count(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fail"))
