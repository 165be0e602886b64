"""The newest checkpoint damaged between two links, for real: link 1 is SIGKILLed (as the OOM
killer would) after its third periodic checkpoint, its newest checkpoint file is truncated
(a node that died mid-write), and link 2 (held at a gate until then) sets it aside, resumes from
the one before and finishes with the uninterrupted run's weights, bit for bit: 0 crashes, the
batches since the older checkpoint computed again. On the local backend, with the real worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chain_support import (Campaign, assert_bitwise_equal, events_of, final_weights,
                           local_profile, prepare_data)
from slmjobs import events, rundir
from support import wait_until

pytestmark = pytest.mark.timeout(900)

SAVE_EVERY, MAX_STEPS = 10, 60
TRAINING = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64",
            f"train.max_steps={MAX_STEPS}", "train.global_batch_size=4", "train.eval_every=0",
            "train.log_every=10", f"checkpoint.save_every_batches={SAVE_EVERY}",
            "checkpoint.save_every_seconds=0", "checkpoint.keep=3", "data.num_workers=0",
            "wandb.enabled=false"]
# Batches last at least this long, so link 1 is still training when the test kills it.
SLOW = ["train.debug_batch_sleep=0.5"]


def truncate_newest_checkpoint(run_dir) -> int:
    """Cut the checkpoint `latest` points at to half its size (a node that died mid-write);
    returns the step it was saved at."""
    folder = rundir.checkpoints_dir(run_dir)
    newest = folder / os.readlink(folder / "latest-rank0.pt")
    with open(newest, "r+b") as handle:
        handle.truncate(newest.stat().st_size // 2)
    return int(newest.name.split("-ba")[1].split("-")[0])


def assert_finished_past_the_damage(run_dir, evs: list[dict], newest_step: int) -> dict:
    """The run (its ledger `evs`) finished, link 2 set the truncated checkpoint aside (kept as
    *.damaged) and resumed from the one saved before it; returns that checkpoint_set_aside event."""
    assert events.stop_reason(evs) == "finished", evs[-3:]
    (aside,) = [e for e in evs if e["event"] == "checkpoint_set_aside"]
    assert (aside["link"], aside["step"]) == (2, newest_step)
    assert aside["resumes_from"] == newest_step - SAVE_EVERY
    damaged = rundir.checkpoints_dir(run_dir) / (Path(aside["path"]).name + ".damaged")
    assert damaged.exists(), aside
    return aside


def test_a_truncated_newest_checkpoint_is_set_aside_and_the_run_finishes_from_the_one_before(
        tmp_path, monkeypatch):
    c = Campaign(tmp_path, prepare_data(tmp_path, documents=40, seq_len=64), TRAINING, SLOW, 600)
    gate = tmp_path / "gate"
    gate.touch()
    profile = local_profile("00:20:00", 60, {"max_links": 5, "crash_budget": 1,
                                             "no_progress_links": 3})
    profile["env_setup"] = [f'if [ "$SLMJOBS_LINK" -ge 2 ]; then '
                            f'while [ -e "{gate}" ]; do sleep 0.1; done; fi']
    monkeypatch.setenv("SLMJOBS_LOCAL_STATE", c.env["SLMJOBS_LOCAL_STATE"])
    try:
        run_dir = c.launch("damaged", c.profile("gated", profile))
        # one at a time: two workers opening streaming datasets at the same instant can collide
        # on a shared-memory name (FileExistsError: /000386_locals)
        c.wait_training(run_dir)
        c.start_reference(ranks=1)
        wait_until(lambda: (rundir.read_progress(run_dir).get("checkpoint_step") or 0) >= 3 * SAVE_EVERY,
                   300, "link 1's third checkpoint", interval=0.2)
        # SIGKILL the worker (not the job): the job records `killed`, its held successor waits
        subprocess.run(["pkill", "-KILL", "-f", f"trainer.train .*run_dir={run_dir} "], check=True)
        wait_until(lambda: events.ended_links(events_of(run_dir)).get(1), 120, "link 1's end")
        newest_step = truncate_newest_checkpoint(run_dir)
        gate.unlink()

        aside = assert_finished_past_the_damage(run_dir, c.wait_settled(run_dir), newest_step)
        ended = events_of(run_dir, "ended")
        assert [e["how"] for e in ended if e["link"] == 1] == ["killed"]
        assert not [e for e in ended if e["how"] == "crashed"]  # 0 crashes
        print(f"batches computed again: {newest_step - aside['resumes_from']} "
              f"(+ {ended[0].get('step', newest_step) - newest_step} lost to the kill)")
        assert_bitwise_equal(final_weights(run_dir), c.reference_weights())
    finally:
        c.close()


def test_a_checkpoint_damaged_after_begin_is_set_aside_by_the_worker(tmp_path, monkeypatch):
    """The chain's `begin` checked the checkpoint and found it whole; then, before the worker
    loads it, it is truncated (a bad disk, a second writer). The worker resumes from the
    newest checkpoint that loads, by the same rule as sample and export, and says so in the
    log and the ledger: 0 crashes. The worker is held between `begin` and its start by the
    profile's Python (a wrapper that waits at a gate), so the order is certain."""
    c = Campaign(tmp_path, prepare_data(tmp_path, documents=40, seq_len=64), TRAINING, SLOW, 600)
    gate, waiting = tmp_path / "gate", tmp_path / "worker-waiting"
    gate.touch()
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    wrapper = wrappers / "gatepython"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1 $2" = "-m trainer.train" ] && [ "$SLMJOBS_LINK" -ge 2 ]; then\n'
        f'    touch "{waiting}"; while [ -e "{gate}" ]; do sleep 0.1; done\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    profile = local_profile("00:20:00", 60, {"max_links": 5, "crash_budget": 1,
                                             "no_progress_links": 3})
    profile.update(python="gatepython", env_setup=[f'export PATH="{wrappers}:$PATH"'])
    monkeypatch.setenv("SLMJOBS_LOCAL_STATE", c.env["SLMJOBS_LOCAL_STATE"])
    try:
        run_dir = c.launch("late", c.profile("late", profile))
        wait_until(lambda: (rundir.read_progress(run_dir).get("checkpoint_step") or 0) >= 3 * SAVE_EVERY,
                   300, "link 1's third checkpoint", interval=0.2)
        subprocess.run(["pkill", "-KILL", "-f", f"trainer.train .*run_dir={run_dir} "], check=True)
        wait_until(waiting.exists, 120, "link 2's begin to pass and its worker to wait")
        assert not events_of(run_dir, "checkpoint_set_aside")  # begin found nothing wrong
        newest_step = truncate_newest_checkpoint(run_dir)
        gate.unlink()

        aside = assert_finished_past_the_damage(run_dir, c.wait_settled(run_dir), newest_step)
        log = rundir.log_path(run_dir, 2).read_text()
        assert f"set aside, resuming from step {newest_step - SAVE_EVERY}" in log
        assert not [e for e in events_of(run_dir, "ended") if e["how"] == "crashed"]
    finally:
        c.close()
