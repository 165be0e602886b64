"""Sweeps of real chains on the REAL Grid Engine, driven through the real CLI.

Sweep sw25, K = 2: `slmjobs sweep tiny --name sw25 --max-running 2 ... seed=1 data.path=bad,builtin`
(member sw25-pathbad trains on a dataset whose training shard is truncated: launch's checks pass,
every worker crashes reading it), then `slmjobs sweep add sw25 seed=2,3`: 4 members of `tiny`,
two of them waiting held at first. A thread polls `qstat -u '*' -xml` every 2 s for the whole
module and counts the members holding a slot (a job queued without a hold, or running). The bad
member stops alone by its guard; its data fixed, `sweep resume sw25 --failed` puts it back under
the throttle and it finishes; sw25-pathbuiltin (seed 1) ends with the weights of the same
training run uninterrupted and alone.

Sweep sw25k, K = 1, long links: its first member meets a failing `qsub` first on its jobs' PATH
(the shim fails for that job name only), so link 1 cannot submit a successor, and it is qdel'd
(a bare SIGKILL) once it trained past a checkpoint: no hook of it runs again, so only `slmjobs
status` can give its slot to the second member. Then `sweep cancel sw25k` leaves nothing.

Everything starts at once from one module fixture (the members sleep more than they compute).
Link counts follow from the walltime and `train.debug_batch_sleep`, never from CPU speed; links
are 100 s, not 60: a link's start-up is CPU-bound (two `import composer`, ~16 CPU-s) and took
~35 s on this shared 2-core machine, which would leave a 1-minute link almost no training.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from chain_support import (Campaign, active_jobs, assert_bitwise_equal, cluster_profile,
                           events_of, final_weights, prepare_data, settled)
from slmjobs import events, ledger, rundir
from slmjobs.backends import QUEUED, RUNNING
from slmjobs.history import current_history
from support import wait_until

pytestmark = pytest.mark.timeout(1800)

K = 2
WALLTIME, WALLTIME_S, MARGIN = "00:01:40", 100, 30
KILL_WALLTIME = "00:10:00"  # the killed member's link must still be training when it is killed
MAX_STEPS, BATCH_SLEEP, SAVE_EVERY = 80, 1.0, 5
# No link trains longer than h_rt - margin: 80 s of batches need two links at least.
assert math.ceil(MAX_STEPS * BATCH_SLEEP / (WALLTIME_S - MARGIN)) >= 2
TRAINING = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64",
            f"train.max_steps={MAX_STEPS}", "train.global_batch_size=4", "train.eval_every=0",
            "train.eval_batches=2", "train.log_every=10",
            f"checkpoint.save_every_batches={SAVE_EVERY}", "checkpoint.save_every_seconds=0",
            "checkpoint.keep=2", "data.num_workers=0", "wandb.enabled=false"]
SLOW = [f"train.debug_batch_sleep={BATCH_SLEEP}"]
LIMITS = {"max_links": 10, "crash_budget": 2, "no_progress_links": 3}
WAIT = 1200
BAD, ALONE = "sw25-pathbad", "sw25-pathbuiltin"
MEMBERS = [BAD, ALONE, "sw25-seed2", "sw25-seed3"]
VICTIM, NEXT = "sw25k-seed1", "sw25k-seed2"


class FailingQsub:
    """`qsub` that fails as a busy qmaster does for the jobs of one member (SGE's JOB_NAME)
    while its control file says `always`, and otherwise runs the real one."""

    def __init__(self, directory: Path, job_name: str):
        directory.mkdir()
        self.dir, self.control = directory, directory / "failures"
        self.set("always")
        script = directory / "qsub"
        script.write_text(f"""#!/bin/bash
if [ "$JOB_NAME" = "{job_name}" ] && [ "$(cat "{self.control}")" = always ]; then
    echo "error: commlib error: got select error (Connection refused)" >&2
    exit 1
fi
exec {shutil.which("qsub")} "$@"
""")
        script.chmod(0o755)

    def set(self, value: str) -> None:
        self.control.write_text(f"{value}\n")


class SlotPoll(threading.Thread):
    """Every 2 s, the members of sweep `prefix` that hold a scheduler slot, as qstat says."""

    def __init__(self, prefix: str):
        super().__init__(daemon=True)
        self.prefix, self.most, self.seen, self.polls = prefix, 0, [], 0
        self.stopping = threading.Event()

    def run(self) -> None:
        from slmjobs.backends.sge import parse_qstat_xml

        while not self.stopping.is_set():
            out = subprocess.run(["qstat", "-u", "*", "-xml"], capture_output=True, text=True).stdout
            holding = sorted({job.name for job in parse_qstat_xml(out).values()
                              if job.name.startswith(self.prefix) and job.state in (QUEUED, RUNNING)})
            self.polls += 1
            if len(holding) > self.most:
                self.most, self.seen = len(holding), holding
            self.stopping.wait(2)


def damage(dataset: Path) -> None:
    for shard in sorted((dataset / "train").rglob("shard.*.mds")):
        with open(shard, "r+b") as handle:
            handle.truncate(100)


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory, sge_cluster):
    root = tmp_path_factory.mktemp("sweep")
    c = Campaign(root, prepare_data(root, documents=40, seq_len=64), [*TRAINING, "seed=1"], SLOW,
                 WAIT)
    c.env["SLMJOBS_DATA_ROOT"] = str(c.data.parent)  # members' data.path: builtin, bad
    shutil.copytree(c.data, c.data.parent / "bad")
    damage(c.data.parent / "bad")
    c.shim = FailingQsub(root / "shim", VICTIM)
    short, long = (c.profile(name, cluster_profile(
        "sge", walltime, MARGIN, LIMITS, submit_retry_seconds=6,
        env_setup=[f'export PATH="{c.shim.dir}:$PATH"']))
        for name, walltime in (("sge-sweep", WALLTIME), ("sge-sweep-long", KILL_WALLTIME)))
    c.poll = SlotPoll("sw25-")
    c.poll.start()
    c.cli("sweep", "tiny", "--name", "sw25", "--max-running", str(K), "--cluster", str(short),
          *TRAINING, *SLOW, "seed=1", "data.path=bad,builtin")
    c.cli("sweep", "add", "sw25", "seed=2,3")
    c.cli("sweep", "tiny", "--name", "sw25k", "--max-running", "1", "--cluster", str(long),
          *TRAINING, *SLOW, "seed=1,2")
    c.chains = {name: c.runs / name for name in [*MEMBERS, VICTIM, NEXT]}
    c.start_reference(ranks=1)
    yield c
    c.poll.stopping.set()
    for name in ("sw25", "sw25k"):
        c.cli("sweep", "cancel", name, check=False)
    c.close()


def released_by(run_dir: Path) -> list[str]:
    return [e["by"] for e in events_of(run_dir, "released")]


@pytest.fixture(scope="module")
def victim_killed(sweep_run):
    """sw25k's first member, without a successor, SIGKILLed once it trained past a checkpoint;
    then `slmjobs status` polled until it gave the freed slot to the second member."""
    c, run_dir = sweep_run, sweep_run.chains[VICTIM]
    wait_until(lambda: events_of(run_dir, "not_submitted")
               and (rundir.read_progress(run_dir).get("checkpoint_step") or 0) >= SAVE_EVERY,
               WAIT, f"{VICTIM} to train past a checkpoint without a successor", interval=0.5)
    (first,) = events_of(run_dir, "submitted")
    subprocess.run(["qdel", first["job_id"]], check=True, capture_output=True)

    def released_through_status():
        c.cli("status", "sw25k")
        return released_by(c.chains[NEXT])

    return wait_until(released_through_status, 180, f"status to release {NEXT}", interval=2.0)


@pytest.fixture(scope="module")
def bad_stopped(sweep_run):
    return sweep_run.wait_settled(sweep_run.chains[BAD])


@pytest.fixture(scope="module")
def resumed(sweep_run, bad_stopped):
    """The data fixed, `sweep resume sw25 --failed` puts the bad member back under the
    throttle (held until a slot is free), and every member reaches its end."""
    c = sweep_run
    bad = c.data.parent / "bad"
    shutil.rmtree(bad)
    shutil.copytree(c.data, bad)
    said = c.cli("sweep", "resume", "sw25", "--failed").stdout
    for name in MEMBERS:
        c.wait_settled(c.chains[name])
    return said


# ------------------------------------------------------------------------------ the tests
def test_a_member_killed_before_its_hook_gives_its_slot_away_through_status(sweep_run,
                                                                          victim_killed):
    assert victim_killed == ["status"]
    row = wait_until(lambda: (lambda r: r if r["state"] == "broken" else None)(
        sweep_run.status(VICTIM)), 120, "the killed member to show broken", interval=2.0)
    assert "was never submitted" in row["stop_detail"]
    said = sweep_run.cli("sweep", "cancel", "sw25k").stdout
    assert "sweep sw25k cancelled: 2 members" in said
    for name in (VICTIM, NEXT):
        wait_until(lambda: not active_jobs(sweep_run.chains[name], "sge"), 60,
                   f"{name}: no job left", interval=1.0)


def test_the_member_on_a_truncated_dataset_stops_alone_by_its_guard(sweep_run, bad_stopped):
    assert events.stop_reason(bad_stopped) == "crash_budget"
    assert [e["how"] for e in bad_stopped if e["event"] == "ended" and e["how"] == "crashed"] \
        == ["crashed"] * LIMITS["crash_budget"]
    rows = {name: sweep_run.status(name) for name in MEMBERS}
    assert rows[BAD]["state"] == "failed"
    assert all(rows[n]["state"] not in ("failed", "stopped", "broken") for n in MEMBERS[1:]), rows
    # the first added member waited (held) for a slot, and the bad one gave it its slot
    assert released_by(sweep_run.chains["sw25-seed2"]) == [BAD]


def test_sweep_resume_failed_finishes_the_stopped_member_and_all_finish(sweep_run, resumed):
    assert f"resumed {BAD}" in resumed
    for name in MEMBERS:
        assert events.stop_reason(ledger.read(sweep_run.chains[name])) == "finished", name
        wait_until(lambda: not active_jobs(sweep_run.chains[name], "sge"), 60,
                   f"{name}: no job left", interval=1.0)
        # every chain needed two links at least (walltime and batch sleep say so)
        assert len(events.trained_links(ledger.read(sweep_run.chains[name]))) >= 2, name
    assert [e["previous_stop"] for e in events_of(sweep_run.chains[BAD], "resumed")] == \
        ["crash_budget"]
    assert len(released_by(sweep_run.chains[BAD])) == 1  # resumed held, then released
    summary = sweep_run.cli("status", "sw25").stdout.strip().splitlines()[-1]
    assert summary == "sweep sw25: 4 members: 0 running, 0 waiting, 4 finished, 0 stopped " \
                      "(at most 2 at once)", summary


def test_never_more_than_k_members_held_a_slot(sweep_run, resumed):
    sweep_run.poll.stopping.set()
    sweep_run.poll.join(timeout=10)
    assert sweep_run.poll.polls > 100  # it looked the whole time
    assert sweep_run.poll.most == K, sweep_run.poll.seen


def test_a_member_has_the_weights_of_the_same_run_launched_alone(sweep_run, resumed):
    assert_bitwise_equal(final_weights(sweep_run.chains[ALONE]), sweep_run.reference_weights())


def test_sweep_table_has_every_members_numbers_from_its_metrics_history(sweep_run, resumed):
    rows = json.loads(sweep_run.cli("sweep", "table", "sw25", "--metric", "loss", "--json").stdout)
    assert sorted(r["name"] for r in rows) == sorted(MEMBERS)
    best = [r["best_loss"] for r in rows]
    assert best == sorted(best)
    for row in rows:
        history = current_history(sweep_run.chains[row["name"]])
        losses = [r["loss"] for r in history if r.get("event") == "train" and "loss" in r]
        assert (row["final_loss"], row["best_loss"]) == (losses[-1], min(losses)), row
        assert row["tokens"] == [r["tokens"] for r in history if "tokens" in r][-1]
        assert row["state"] == "finished" and row["gpu_hours"] > 0
    assert {r["name"]: r["overrides"] for r in rows} == {
        BAD: "data.path=bad", ALONE: "data.path=builtin", "sw25-seed2": "seed=2",
        "sw25-seed3": "seed=3"}
    csv = sweep_run.cli("sweep", "table", "sw25", "--metric", "loss", "--csv").stdout.splitlines()
    assert len(csv) == 1 + len(MEMBERS) and csv[0].startswith("name,overrides,final_loss")
    plot = Path(sweep_run.cli("plot", "sw25", "--metric", "loss").stdout.strip())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
