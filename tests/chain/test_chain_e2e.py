"""End to end: real chains of jobs on the REAL Grid Engine, the REAL SLURM and the local backend,
driven through the real CLI, training the tiny model on CPU.

Every chain runs the same training (TRAINING below) with a short walltime, so it needs several
links. They are all launched at once by the module fixture `campaign`, together with one
uninterrupted reference run of the same training; each test then waits for its own chain and
compares the final weights with the reference, bit for bit. `train.debug_batch_sleep` makes each
batch last longer without burning CPU, so the chains can share this 2-core machine.

The scenarios (issues 4 and 26), each on both schedulers (parametrized): planned hand-offs
(`--gpus 2`: two gloo ranks through `composer -n 2` on the scheduler's GPUs, compared with a
two-rank reference; and on the local backend with one), a link at its walltime with no deadline
of its own (a margin "below zero": Grid Engine's h_rt SIGKILLs it, SLURM's --time SIGTERMs it),
a crash loop (a dataset whose training shard is truncated: launch's checks pass, every worker
crashes reading it), cancel mid-chain then resume, and a successor that starts after the run
finished. All chains of both schedulers run at once (one module fixture), so the SLURM tier adds
little wall time to the Grid Engine one.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest

from chain_support import (SCHEDULERS, Campaign, active_jobs, assert_bitwise_equal,
                           cluster_profile, events_of, final_weights, local_profile, prepare_data,
                           settled)
from slmjobs import events, kinds, ledger, rundir
from support import wait_until

pytestmark = pytest.mark.timeout(1500)

# Link start-up here is CPU-bound (`import composer` twice: the launcher and the worker, ~16
# CPU-s) and the worker's exit after a hand-off takes several seconds on a busy 2-core machine,
# so links are two minutes with a 30 s margin.
WALLTIME = "00:02:00"         # h_rt of every link
WALLTIME_S = 120
MARGIN = 30                   # seconds between the worker's deadline and h_rt
SAVE_EVERY = 10               # periodic checkpoint interval (batches): bounds a hard kill's loss
MAX_STEPS = 200
# An even smaller GPT than `tiny` on 64-token windows: each batch costs milliseconds, so the
# chains' CPU goes to their start-ups and the walltime to `train.debug_batch_sleep`.
TRAINING = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64",
    f"train.max_steps={MAX_STEPS}", "train.global_batch_size=4", "train.eval_every=0",
    "train.eval_batches=2", "train.log_every=20",
    f"checkpoint.save_every_batches={SAVE_EVERY}", "checkpoint.save_every_seconds=0",
    "checkpoint.keep=2", "data.num_workers=0", "wandb.enabled=false",
]
# A testing aid that only sleeps after each batch: walltime passes, CPU stays free, the
# arithmetic is untouched (the reference runs without it and must still match bit for bit).
BATCH_SLEEP = 1.0
SLOW = [f"train.debug_batch_sleep={BATCH_SLEEP}"]
# The fewest links a chain can finish in, whatever the machine's speed: no link trains longer
# than h_rt - margin, and every batch lasts at least BATCH_SLEEP. (A slower machine only adds
# links; 200 steps at 1 s in links of at most 90 s need 3.)
MIN_LINKS = math.ceil(MAX_STEPS * BATCH_SLEEP / (WALLTIME_S - MARGIN))
# Two ranks start three Pythons a link (the launcher and two workers, ~24 CPU-s), beside other test
# modules: their links get a minute more, so start-up on a busy machine still leaves time to
# train, and their steps sleep longer, so they still need 3 links or more.
TWO_RANKS_WALLTIME, TWO_RANKS_WALLTIME_S = "00:03:00", 180
TWO_RANKS_SLOW = ["train.debug_batch_sleep=2.0"]
TWO_RANKS_MIN_LINKS = math.ceil(MAX_STEPS * 2.0 / (TWO_RANKS_WALLTIME_S - MARGIN))
LIMITS = {"max_links": 20, "crash_budget": 3, "no_progress_links": 3}
WAIT = 900                    # seconds a chain may take on a busy 2-core machine


# ------------------------------------------------------------------------------ helpers
def wait_settled(run_dir: Path) -> list[dict]:
    wait_until(lambda: settled(run_dir), WAIT, f"chain {run_dir.name} to stop", interval=2.0)
    return ledger.read(run_dir)


def trained_links(evs: list[dict]) -> list[dict]:
    """`ended` events of the links that ran the worker, in link order (not those that found
    nothing to do, nor successors removed before they started)."""
    ended = events.ended_links(evs)
    return [ended[k] for k in events.trained_links(evs) if k in ended]


_RESUMED = re.compile(r"resumed from \S+ at step (\d+)/")


def start_step(run_dir: Path, link: int) -> int:
    """The step a link's worker started from, as its own log says (0 for a fresh start)."""
    text = (run_dir / "logs" / f"link-{link:03d}.log").read_text(errors="replace")
    found = _RESUMED.findall(text)
    return int(found[-1]) if found else 0


def assert_finished_without_leftovers(run_dir: Path, kind: str) -> list[dict]:
    evs = wait_settled(run_dir)
    assert events.stop_reason(evs) == "finished", evs[-3:]
    assert (run_dir / "DONE").exists()
    wait_until(lambda: not active_jobs(run_dir, kind), 60, f"{run_dir.name}: no job left", interval=1.0)
    return evs


def assert_no_batch_recomputed_at_hand_offs(run_dir: Path, evs: list[dict]) -> None:
    links = [e for e in trained_links(evs) if e["how"] in ("handed_off", "finished")]
    for done in links:
        if done["how"] == "handed_off":
            # stopped at a batch boundary with a checkpoint of exactly that step
            assert done["step"] == done["progress"], done
            assert start_step(run_dir, done["link"] + 1) == done["progress"], done
    trained = sum(e["step"] - start_step(run_dir, e["link"]) for e in links)
    assert trained == MAX_STEPS, f"{trained} batches trained for {MAX_STEPS} steps"


def wait_accounted(campaign: "Campaign", name: str, job_ids: list[str]) -> dict[str, dict]:
    """job id -> its `accounted` event, once there is one for each. `slmjobs status` asks the
    scheduler's accounting (qacct, sacct) about jobs that left the queue and records the answer;
    it lags the job's end."""
    run_dir = campaign.chains[name]

    def every_job_accounted():
        campaign.status(name)
        accounted = {e["job_id"]: e for e in ledger.read(run_dir) if e["event"] == "accounted"}
        return accounted if set(job_ids) <= set(accounted) else None

    return wait_until(every_job_accounted, 60, f"qacct to know the jobs of {name}", interval=2.0)


def assert_handed_off_until_finished(run_dir: Path, links: list[dict]) -> None:
    """Every trained link handed off but the last, which finished; else the odd link's log."""
    hows = [e["how"] for e in links]
    odd = next((e for e in links[:-1] if e["how"] != "handed_off"), links[-1])
    if hows != ["handed_off"] * (len(links) - 1) + ["finished"]:
        log = rundir.log_path(run_dir, odd["link"])
        said = log.read_text(errors="replace")[-6000:] if log.exists() else f"(no {log})"
        pytest.fail(f"{hows}; link {odd['link']} ({odd['how']}) logged, at its end:\n{said}")


def assert_planned_chain_completed(run_dir: Path, kind: str, min_links: int = MIN_LINKS
                                   ) -> tuple[list[dict], list[dict]]:
    """It finished by itself over `min_links` links or more, each handing off until the last, and
    no batch was computed twice. Returns the ledger and the trained links."""
    evs = assert_finished_without_leftovers(run_dir, kind)
    links = trained_links(evs)
    assert len(links) >= min_links >= 3, links
    assert_handed_off_until_finished(run_dir, links)
    assert_no_batch_recomputed_at_hand_offs(run_dir, evs)
    return evs, links


# ------------------------------------------------------------------------------ the campaign
def damaged_copy(dataset: Path, to: Path) -> Path:
    """The dataset with its training shard truncated: it passes every check a launch can make
    (dataset.json is whole) and crashes every worker that reads it."""
    shutil.copytree(dataset, to)
    shards = sorted((to / "train").rglob("shard.*.mds"))
    assert shards, f"no training shard under {to}"
    for shard in shards:
        with open(shard, "r+b") as handle:
            handle.truncate(100)
    return to



@pytest.fixture(scope="module")
def campaign(tmp_path_factory, sge_cluster, slurm_cluster):
    """Every chain of this module, on both schedulers, launched at once and waited for by the
    tests: the chains are independent, so running them side by side costs the wall time of the
    slowest, not the sum."""
    root = tmp_path_factory.mktemp("chains")
    c = Campaign(root, prepare_data(root, documents=40, seq_len=64), TRAINING, SLOW, WAIT)
    damaged = damaged_copy(c.data, root / "damaged")
    for scheduler in SCHEDULERS:
        short = c.profile(f"{scheduler}-short", cluster_profile(scheduler, WALLTIME, MARGIN, LIMITS))
        # No deadline reaches the worker (as if the margin were below zero): the scheduler's
        # own walltime enforcement ends every link.
        nodeadline = c.profile(f"{scheduler}-no-margin",
                               cluster_profile(scheduler, WALLTIME, MARGIN, LIMITS,
                                               env={"SLMJOBS_DEADLINE": ""}))
        # planned 2 + cancel 1 + hardkill 1 = 4 GPUs, this lane's half of each test cluster's
        # 8 (tests/support.py SCHEDULER_LANES); the crash loop's links may wait in the queue
        # for a free one, as they would on a full cluster.
        two_ranks = c.profile(f"{scheduler}-two-ranks",
                              cluster_profile(scheduler, TWO_RANKS_WALLTIME, MARGIN, LIMITS))
        c.wait_training(c.launch(f"{scheduler}-planned", two_ranks, gpus=2, slow=TWO_RANKS_SLOW))
        for name, profile in (("cancel", short), ("hardkill", nodeadline)):
            c.wait_training(c.launch(f"{scheduler}-{name}", profile))
        c.launch(f"{scheduler}-crashloop", short, f"data.path={damaged}")
    local = c.profile("local-short", local_profile(WALLTIME, MARGIN, LIMITS))
    c.wait_training(c.launch("local", local))
    c.start_reference(ranks=1)
    c.start_reference(ranks=2)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference(campaign):
    return campaign.reference_weights(ranks=1)


@pytest.fixture(scope="module")
def reference_two_ranks(campaign):
    return campaign.reference_weights(ranks=2)


# ------------------------------------------------------------------------------ the tests
def training_after_a_hand_off(run_dir: Path) -> bool:
    """A link after the first trains, a few batches past the checkpoint it resumed from."""
    progress = rundir.read_progress(run_dir)
    link = progress.get("link") or 0
    before = events.ended_links(ledger.read(run_dir)).get(link - 1)
    return (link >= 2 and progress.get("state") == "training" and before is not None
            and progress.get("step", 0) >= (events.progress_of(before) or 0) + 3)


@pytest.fixture(scope="module")
def cancelled(campaign) -> dict[str, str]:
    """scheduler -> what `slmjobs cancel` printed for its cancel chain, each cancelled as soon as
    a later link of it trains: the chains run side by side, so they are watched together."""
    waiting = {scheduler: f"{scheduler}-cancel" for scheduler in SCHEDULERS}
    said = {}

    def cancel_the_ready_ones():
        for scheduler, name in list(waiting.items()):
            if training_after_a_hand_off(campaign.chains[name]):
                said[scheduler] = campaign.cli("cancel", name).stdout
                del waiting[scheduler]
        return not waiting

    wait_until(cancel_the_ready_ones, WAIT, "a later link of each cancel chain to train",
               interval=0.5)
    return said


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_cancel_mid_chain_then_resume_completes_with_the_reference_weights(campaign, cancelled,
                                                                          scheduler):
    name = f"{scheduler}-cancel"
    run_dir = campaign.chains[name]
    assert "cancelled" in cancelled[scheduler]
    # nothing of it queued, held or running, as qstat/squeue themselves say
    wait_until(lambda: not active_jobs(run_dir, scheduler), 60, "the cancelled chain's jobs to go",
               interval=1.0)
    row = campaign.status(name)
    assert row["state"] == "cancelled", row
    assert events.stop_reason(ledger.read(run_dir)) == "cancelled"
    step_at_cancel = kinds.by_name("train").durable_progress(run_dir)

    out = campaign.cli("resume", name).stdout
    assert "resumed" in out
    evs = assert_finished_without_leftovers(run_dir, scheduler)
    (resumed,) = [e for e in evs if e["event"] == "resumed"]
    assert resumed["progress"] == step_at_cancel
    assert start_step(run_dir, resumed["link"]) == step_at_cancel
    assert campaign.status(name)["state"] == "finished"
    assert_bitwise_equal(final_weights(run_dir), campaign.reference_weights())


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_crash_loop_stops_after_the_crash_budget_with_nothing_left(campaign, scheduler):
    name = f"{scheduler}-crashloop"
    run_dir = campaign.chains[name]
    evs = wait_settled(run_dir)
    (stopped,) = [e for e in evs if e["event"] == "stopped"]
    assert stopped["reason"] == "crash_budget"
    crashed = [e for e in evs if e["event"] == "ended" and e["how"] == "crashed"]
    assert len(crashed) == LIMITS["crash_budget"]
    assert all(e["exit_status"] not in (0, 75) for e in crashed)
    wait_until(lambda: not active_jobs(run_dir, scheduler), 60, "no crash-loop job left",
               interval=1.0)
    row = campaign.status(name)
    assert row["stop_reason"] == "crash_budget" and row["state"] == "failed", row
    assert "stopped: crash_budget" in campaign.status_table(name)
    assert not (run_dir / "DONE").exists()


# How each test cluster's job script asks for the two GPUs.
TWO_GPUS = {"sge": "#$ -l gpus=2", "slurm": "#SBATCH --gres=gpu:2"}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_planned_hand_offs_of_two_ranks_give_the_uninterrupted_weights(
        campaign, reference_two_ranks, scheduler):
    name = f"{scheduler}-planned"
    run_dir = campaign.chains[name]
    evs, links = assert_planned_chain_completed(run_dir, scheduler, TWO_RANKS_MIN_LINKS)
    # the successor held on the last link was removed when the run finished
    last = links[-1]["link"]
    assert [e["how"] for e in evs if e["event"] == "ended" and e["link"] == last + 1] == \
        ["cancelled"]
    assert campaign.status(name)["state"] == "finished"
    # Every link ran two ranks, and the scheduler granted it two GPUs.
    accounted = wait_accounted(campaign, name, [done["job_id"] for done in links])
    for done in links:
        script = (run_dir / "scripts" / f"link-{done['link']:03d}.sh").read_text()
        assert TWO_GPUS[scheduler] in script.splitlines()
        assert "composer -n 2 -m trainer.train" in script
        assert accounted[done["job_id"]]["gpus"] == 2, accounted[done["job_id"]]
    assert_bitwise_equal(final_weights(run_dir), reference_two_ranks)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_successor_starting_after_the_finish_exits_at_once(campaign, scheduler):
    from slmjobs import submit

    run_dir = campaign.chains[f"{scheduler}-planned"]
    wait_settled(run_dir)
    before = len(events_of(run_dir, "submitted"))
    link = max(e["link"] for e in events_of(run_dir) if isinstance(e.get("link"), int)) + 1
    job_id = submit.submit_link(run_dir, link)  # e.g. resubmitted by hand, or a lost qdel

    def closed():
        return events.ended_links(ledger.read(run_dir)).get(link)

    ended = wait_until(closed, 120, f"late link {link} to end", interval=1.0)
    started = events.started_links(ledger.read(run_dir))[link]
    assert ended["how"] == "cancelled" and ended["job_id"] == job_id
    assert ended["time"] - started["time"] < 5, "the late link should exit within seconds"
    wait_until(lambda: not active_jobs(run_dir, scheduler), 60, "the late link's job to leave",
               interval=1.0)
    assert len(events_of(run_dir, "submitted")) == before + 1  # it queued nothing further


def test_hard_kill_at_h_rt_continues_from_the_last_checkpoint(campaign, reference):
    """Grid Engine's h_rt is a bare SIGKILL (FINDINGS 3c): the link dies without a word, the
    next one resumes from the last periodic checkpoint."""
    run_dir = campaign.chains["sge-hardkill"]
    evs = assert_finished_without_leftovers(run_dir, "sge")
    killed = [e for e in evs if e["event"] == "ended" and e["how"] == "killed"]
    assert killed, "no link was killed at h_rt"
    for dead in killed:
        # resumed from the last periodic checkpoint; lost at most one checkpoint interval
        assert start_step(run_dir, dead["link"] + 1) == dead["progress"]
        assert 0 <= dead["step"] - dead["progress"] <= SAVE_EVERY, dead
    # A link killed just as the run finished has no later link to ask qacct for it;
    # `slmjobs status` records what the chain could not.
    accounted = wait_accounted(campaign, "sge-hardkill", [dead["job_id"] for dead in killed])
    for dead in killed:  # Grid Engine itself says h_rt killed it
        assert accounted[dead["job_id"]]["exit_status"] == 137, accounted.get(dead["job_id"])
    assert_bitwise_equal(final_weights(run_dir), reference)


def test_a_link_at_its_slurm_time_limit_hands_off_on_sigterm(campaign, reference):
    """SLURM's --time is SIGTERM to every process of the job, SIGKILL 30 s (KillWait) later
    (docs/SLURM.md): the worker, given no deadline, takes the SIGTERM as its cue, checkpoints at
    the next batch boundary and hands off, and the next link continues from that checkpoint:
    not a batch is lost. SLURM's accounting says the time limit ended each of those jobs."""
    run_dir = campaign.chains["slurm-hardkill"]
    evs = assert_finished_without_leftovers(run_dir, "slurm")
    links = trained_links(evs)
    # No link trains past its --time plus KillWait (150 s): 200 batches of 1 s need two at least.
    assert len(links) >= 2, links
    assert_handed_off_until_finished(run_dir, links)
    assert_no_batch_recomputed_at_hand_offs(run_dir, evs)
    handed_off = [e for e in links if e["how"] == "handed_off"]
    for done in handed_off:
        log = (run_dir / "logs" / f"link-{done['link']:03d}.log").read_text(errors="replace")
        assert "received SIGTERM" in log and "DUE TO TIME LIMIT" in log, done
        assert f"link {done['link']} job {done['job_id']} on" in log  # its own id, from SLURM
    accounted = wait_accounted(campaign, "slurm-hardkill", [e["job_id"] for e in handed_off])
    for done in handed_off:
        verdict = accounted[done["job_id"]]
        assert verdict["failed"] and "time limit" in verdict["reason"], verdict
    assert_bitwise_equal(final_weights(run_dir), reference)


def test_planned_hand_offs_on_the_local_backend(campaign, reference, monkeypatch):
    monkeypatch.setenv("SLMJOBS_LOCAL_STATE", campaign.env["SLMJOBS_LOCAL_STATE"])
    run_dir = campaign.chains["local"]
    assert_planned_chain_completed(run_dir, "local")
    assert_bitwise_equal(final_weights(run_dir), reference)
