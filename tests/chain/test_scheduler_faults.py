"""A busy or unreachable scheduler, for real, on Grid Engine and on SLURM (parametrized): each
chain's profile puts a submit command (`qsub`, `sbatch`) first on its jobs' PATH that prints what
a busy controller prints (`error: commlib error: got select error (Connection refused)`;
`sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect
failure)`), exit 1, while its control file says so, and otherwise runs the real command. The
launches from this test process use the real command; only the chain's own submissions, inside
the jobs, meet the failures.

- retry: the submit command fails twice in a row inside link 1: the chain rides it out and
  finishes with the uninterrupted run's weights, bit for bit;
- down: it fails for good: link 1 trains, then the chain stops with `submit_failed` and the
  scheduler's own message, nothing queued; once it works, `slmjobs resume` finishes the run;
- orphan: link 1 could not submit its successor and is then killed with SIGKILL as soon as it
  trained past a checkpoint (Grid Engine: qdel; SLURM: `kill -9` of every process `scontrol
  listpids` names, since scancel always sends SIGTERM first): status shows the run as broken
  with the command that continues it, and resume finishes it.

All six chains (three per scheduler) run at once from one module fixture.

The links are short (TRAINING needs two of them whatever the machine's speed) and the retry
budget is the profile's `submit_retry_seconds: 6`.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest

from chain_support import (SCHEDULERS, Campaign, active_jobs, assert_bitwise_equal,
                           cluster_profile, events_of, final_weights, prepare_data)
from slmjobs import events, ledger, rundir
from support import wait_until

pytestmark = pytest.mark.timeout(1200)

WALLTIME, WALLTIME_S, MARGIN = "00:01:40", 100, 40
ORPHAN_WALLTIME = "00:10:00"
MAX_STEPS, BATCH_SLEEP = 100, 0.75
# No link trains longer than h_rt - margin: 75 s of batches need two links at least.
assert math.ceil(MAX_STEPS * BATCH_SLEEP / (WALLTIME_S - MARGIN)) >= 2
TRAINING = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64",
            f"train.max_steps={MAX_STEPS}", "train.global_batch_size=4", "train.eval_every=0",
            "train.eval_batches=2", "train.log_every=20", "checkpoint.save_every_batches=10",
            "checkpoint.save_every_seconds=0", "checkpoint.keep=2", "data.num_workers=0",
            "wandb.enabled=false"]
SLOW = [f"train.debug_batch_sleep={BATCH_SLEEP}"]
LIMITS = {"max_links": 10, "crash_budget": 3, "no_progress_links": 3}
WAIT = 900
# What each scheduler's submit command prints when its controller does not answer, and the
# words of it the chain's stop detail must carry.
SUBMIT = {"sge": "qsub", "slurm": "sbatch"}
BUSY = {"sge": "error: commlib error: got select error (Connection refused)",
        "slurm": "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
                 "(connect failure)"}
BUSY_WORDS = {"sge": "Connection refused", "slurm": "Unable to contact slurm controller"}


class FailingSubmit:
    """A directory with the scheduler's submit command that fails while `failures` says so
    ("always", or a count it counts down), logging every call."""

    def __init__(self, directory: Path, scheduler: str):
        self.dir = directory
        directory.mkdir()
        self.control = directory / "failures"
        self.calls = directory / "calls"
        self.set(0)
        script = directory / SUBMIT[scheduler]
        script.write_text(f"""#!/bin/bash
exec 9>"{directory}/lock"; flock 9
left=$(cat "{self.control}")
if [ "$left" = always ] || [ "$left" -gt 0 ]; then
    [ "$left" = always ] || echo $((left - 1)) > "{self.control}"
    echo "failed $*" >> "{self.calls}"
    echo "{BUSY[scheduler]}" >&2
    exit 1
fi
echo "passed $*" >> "{self.calls}"
exec {shutil.which(SUBMIT[scheduler])} "$@"
""")
        script.chmod(0o755)

    def set(self, failures) -> None:
        self.control.write_text(f"{failures}\n")

    def failed_calls(self) -> int:
        text = self.calls.read_text() if self.calls.exists() else ""
        return sum(line.startswith("failed") for line in text.splitlines())


@pytest.fixture(scope="module")
def faults(tmp_path_factory, sge_cluster, slurm_cluster):
    root = tmp_path_factory.mktemp("faults")
    c = Campaign(root, prepare_data(root, documents=40, seq_len=64), TRAINING, SLOW, WAIT)
    c.shims = {}
    for scheduler in SCHEDULERS:
        for scenario, failures in (("orphan", "always"), ("retry", 2), ("down", "always")):
            name = f"{scheduler}-{scenario}"
            shim = c.shims[name] = FailingSubmit(root / f"shim-{name}", scheduler)
            shim.set(failures)
            # the orphan's link must still be training when it is killed, however slow its start
            walltime = ORPHAN_WALLTIME if scenario == "orphan" else WALLTIME
            profile = c.profile(name, cluster_profile(
                scheduler, walltime, MARGIN, LIMITS, submit_retry_seconds=6,
                env_setup=[f'export PATH="{shim.dir}:$PATH"']))
            c.wait_training(c.launch(name, profile))
            if scenario == "orphan":
                kill_while_training_without_a_successor(c.chains[name], scheduler)
    c.start_reference(ranks=1)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(faults):
    return faults.reference_weights(ranks=1)


def kill_while_training_without_a_successor(run_dir: Path, scheduler: str) -> None:
    """SIGKILL link 1 once it trains past a checkpoint, its successor not submitted."""
    wait_until(lambda: events_of(run_dir, "not_submitted")
               and (rundir.read_progress(run_dir).get("checkpoint_step") or 0) >= 10,
               WAIT, "link 1 to train past a checkpoint without a successor", interval=0.5)
    (first,) = events_of(run_dir, "submitted")
    sigkill_job(scheduler, first["job_id"])


def sigkill_job(scheduler: str, job_id: str) -> None:
    """Every process of the job SIGKILLed at once, as a dead node or the OOM killer would."""
    if scheduler == "sge":  # qdel without -notify is a bare SIGKILL (FINDINGS 3g)
        subprocess.run(["qdel", job_id], check=True, capture_output=True)
        return
    listed = subprocess.run(["scontrol", "listpids", job_id], check=True, capture_output=True,
                            text=True).stdout.splitlines()[1:]
    pids = [line.split()[0] for line in listed if line.split() and line.split()[0].isdigit()]
    assert pids, f"scontrol listpids {job_id} named no process"
    subprocess.run(["kill", "-9", *pids], check=False, capture_output=True)


def finished_without_leftovers(c: Campaign, name: str, scheduler: str) -> list[dict]:
    run_dir = c.chains[name]
    evs = c.wait_settled(run_dir)
    assert events.stop_reason(evs) == "finished", evs[-3:]
    wait_until(lambda: not active_jobs(run_dir, scheduler), 60, f"{name}: no job left",
               interval=1.0)
    return evs


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_submit_failing_twice_inside_a_link_is_ridden_out(faults, reference, scheduler):
    name = f"{scheduler}-retry"
    run_dir = faults.chains[name]
    evs = finished_without_leftovers(faults, name, scheduler)
    assert faults.shims[name].failed_calls() == 2
    assert events_of(run_dir, "not_submitted") == []
    assert len(events.trained_links(evs)) >= 2
    assert "asking again" in rundir.log_path(run_dir, 1).read_text()
    assert_bitwise_equal(final_weights(run_dir), reference)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_submit_down_for_good_stops_the_chain_visibly_and_resume_finishes(faults, reference,
                                                                          scheduler):
    name = f"{scheduler}-down"
    run_dir, shim, said = faults.chains[name], faults.shims[name], BUSY_WORDS[scheduler]
    evs = faults.wait_settled(run_dir)
    stop = events.stop_in_force(evs)
    assert stop["reason"] == "submit_failed" and said in stop["detail"], stop
    assert [e["reason"] for e in events_of(run_dir, "not_submitted")] == ["submit_failed"]
    wait_until(lambda: not active_jobs(run_dir, scheduler), 60, "nothing of it queued",
               interval=1.0)
    row = faults.status(name)
    assert (row["state"], row["stop_reason"]) == ("stopped", "submit_failed")
    table = faults.status_table(name)
    assert said in table and f"continue: slmjobs resume {name}" in table

    shim.set(0)  # the controller is back
    assert "resumed" in faults.cli("resume", name).stdout
    finished_without_leftovers(faults, name, scheduler)
    assert_bitwise_equal(final_weights(run_dir), reference)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_link_killed_after_its_successor_failed_leaves_a_broken_run_that_resume_continues(
        faults, reference, scheduler):
    name = f"{scheduler}-orphan"
    run_dir, shim = faults.chains[name], faults.shims[name]  # killed by the fixture

    def broken():
        row = faults.status(name)
        return row if row["state"] == "broken" else None

    row = wait_until(broken, 120, "status to call the run broken", interval=2.0)
    assert "was never submitted" in row["stop_detail"]
    assert f"continue: slmjobs resume {name}" in faults.status_table(name)
    assert not active_jobs(run_dir, scheduler)

    shim.set(0)
    faults.cli("resume", name)
    evs = finished_without_leftovers(faults, name, scheduler)
    killed = [e for e in evs if e["event"] == "ended" and e["how"] == "killed"]
    assert [e["link"] for e in killed] == [1]
    assert_bitwise_equal(final_weights(run_dir), reference)
    assert ledger.read(run_dir)  # the ledger survived it all
