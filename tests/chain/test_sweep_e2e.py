"""A sweep of real chains on the REAL Grid Engine, driven through the real CLI: 4 members of
`tiny` (one added later with `sweep add`), at most K = 2 holding a slot at once.

One module fixture starts everything at once (the members sleep more than they compute):

- `slmjobs sweep tiny --name sw25 --max-running 2 ... seed=1,2,3`, then `slmjobs sweep add sw25
  seed=4 data.path=bad`: member sw25-seed4-pathbad trains on a dataset whose training shard is
  truncated (launch's checks pass, every worker crashes reading it);
- member sw25-seed2 meets a failing `qsub` first on its jobs' PATH (the shim fails for its job name
  only), so its link 1 cannot submit a successor, and it is qdel'd (a bare SIGKILL) once it
  trained past a checkpoint: no hook of it ever runs again, so only `slmjobs status` can give its
  slot to the next member;
- a thread polls `qstat -u '*' -xml` every 2 s for the whole module and counts the members
  holding a slot (a job queued without a hold, or running);
- the same training as sw25-seed1, uninterrupted, as the reference for its final weights.

Link counts follow from the walltime and `train.debug_batch_sleep`, never from CPU speed.
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
WALLTIME, WALLTIME_S, MARGIN = "00:01:00", 60, 20
MAX_STEPS, BATCH_SLEEP, SAVE_EVERY = 60, 0.75, 5
# No link trains longer than h_rt - margin: 45 s of batches need two links at least.
assert math.ceil(MAX_STEPS * BATCH_SLEEP / (WALLTIME_S - MARGIN)) >= 2
TRAINING = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64",
            f"train.max_steps={MAX_STEPS}", "train.global_batch_size=4", "train.eval_every=0",
            "train.eval_batches=2", "train.log_every=10",
            f"checkpoint.save_every_batches={SAVE_EVERY}", "checkpoint.save_every_seconds=0",
            "checkpoint.keep=2", "data.num_workers=0", "wandb.enabled=false"]
SLOW = [f"train.debug_batch_sleep={BATCH_SLEEP}"]
LIMITS = {"max_links": 10, "crash_budget": 2, "no_progress_links": 3}
WAIT = 1200
VICTIM, BAD = "sw25-seed2", "sw25-seed4-pathbad"
MEMBERS = ["sw25-seed1", VICTIM, "sw25-seed3", BAD]


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
    profile = c.profile("sge-sweep", cluster_profile(
        "sge", WALLTIME, MARGIN, LIMITS, submit_retry_seconds=6,
        env_setup=[f'export PATH="{c.shim.dir}:$PATH"']))
    c.poll = SlotPoll("sw25-")
    c.poll.start()
    c.cli("sweep", "tiny", "--name", "sw25", "--max-running", str(K), "--cluster", str(profile),
          *TRAINING, *SLOW, "seed=1,2,3")
    c.cli("sweep", "add", "sw25", "seed=4", "data.path=bad")
    c.chains = {name: c.runs / name for name in MEMBERS}
    c.start_reference(ranks=1)
    yield c
    c.poll.stopping.set()
    c.cli("sweep", "cancel", "sw25", check=False)
    c.close()


def released_by(run_dir: Path) -> list[str]:
    return [e["by"] for e in events_of(run_dir, "released")]


@pytest.fixture(scope="module")
def victim_killed(sweep_run):
    """sw25-seed2's link 1, without a successor, SIGKILLed once it trained past a checkpoint;
    then `slmjobs status` polled until it gave the freed slot to the next member."""
    c, run_dir = sweep_run, sweep_run.chains[VICTIM]
    wait_until(lambda: events_of(run_dir, "not_submitted")
               and (rundir.read_progress(run_dir).get("checkpoint_step") or 0) >= SAVE_EVERY,
               WAIT, "sw25-seed2 to train past a checkpoint without a successor", interval=0.5)
    (first,) = events_of(run_dir, "submitted")
    subprocess.run(["qdel", first["job_id"]], check=True, capture_output=True)

    def released_through_status():
        c.cli("status", "sw25")
        return released_by(c.chains["sw25-seed3"])

    return wait_until(released_through_status, 180, "status to release sw25-seed3", interval=2.0)


@pytest.fixture(scope="module")
def first_round(sweep_run, victim_killed):
    """Every member as far as it goes by itself: seed1 and seed3 finished, the bad member
    stopped by its guard, the victim broken."""
    for name in ("sw25-seed1", "sw25-seed3", BAD):
        sweep_run.wait_settled(sweep_run.chains[name])
    return {name: sweep_run.status(name) for name in MEMBERS}


@pytest.fixture(scope="module")
def resumed(sweep_run, first_round):
    """The data fixed and qsub back, `sweep resume sw --failed` brings the rest to their end."""
    c = sweep_run
    bad = c.data.parent / "bad"
    shutil.rmtree(bad)
    shutil.copytree(c.data, bad)
    c.shim.set("0")
    said = c.cli("sweep", "resume", "sw25", "--failed").stdout
    for name in MEMBERS:
        c.wait_settled(c.chains[name])
    return said


# ------------------------------------------------------------------------------ the tests
def test_a_member_killed_before_its_hook_gives_its_slot_away_through_status(sweep_run,
                                                                          victim_killed):
    assert victim_killed == ["status"]
    row = wait_until(lambda: (lambda r: r if r["state"] == "broken" else None)(
        sweep_run.status(VICTIM)), 120, "the victim to show broken", interval=2.0)
    assert "was never submitted" in row["stop_detail"]


def test_the_member_on_a_truncated_dataset_stops_alone_and_the_others_finish(sweep_run,
                                                                             first_round):
    assert first_round[BAD]["stop_reason"] == "crash_budget", first_round[BAD]
    assert first_round["sw25-seed1"]["state"] == first_round["sw25-seed3"]["state"] == "finished"
    # the bad member waited (held) for a slot: the first member over released it
    assert released_by(sweep_run.chains[BAD]) == ["sw25-seed1"]
    summary = sweep_run.cli("status", "sw25").stdout.strip().splitlines()[-1]
    assert summary == "sweep sw25: 4 members: 0 running, 0 waiting, 2 finished, 2 stopped " \
                      "(at most 2 at once)", summary


def test_sweep_resume_failed_finishes_the_stopped_members(sweep_run, resumed):
    assert f"resumed {VICTIM}, {BAD}" in resumed
    for name in MEMBERS:
        assert events.stop_reason(ledger.read(sweep_run.chains[name])) == "finished", name
        wait_until(lambda: not active_jobs(sweep_run.chains[name], "sge"), 60,
                   f"{name}: no job left", interval=1.0)
    assert [e["previous_stop"] for e in events_of(sweep_run.chains[BAD], "resumed")] == \
        ["crash_budget"]
    # every chain needed two links at least (walltime and batch sleep say so)
    for name in MEMBERS:
        assert len(events.trained_links(ledger.read(sweep_run.chains[name]))) >= 2, name


def test_never_more_than_k_members_held_a_slot(sweep_run, resumed):
    sweep_run.poll.stopping.set()
    sweep_run.poll.join(timeout=10)
    assert sweep_run.poll.polls > 100  # it looked the whole time
    assert sweep_run.poll.most == K, sweep_run.poll.seen


def test_a_member_has_the_weights_of_the_same_run_launched_alone(sweep_run, resumed):
    assert_bitwise_equal(final_weights(sweep_run.chains["sw25-seed1"]), sweep_run.reference_weights())


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
    assert {r["name"]: r["overrides"] for r in rows}[BAD] == "seed=4 data.path=bad"
    csv = sweep_run.cli("sweep", "table", "sw25", "--metric", "loss", "--csv").stdout.splitlines()
    assert len(csv) == 1 + len(MEMBERS) and csv[0].startswith("name,overrides,final_loss")
    plot = Path(sweep_run.cli("plot", "sw25", "--metric", "loss").stdout.strip())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
