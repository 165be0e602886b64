"""A learning rate that blows the loss up: the real worker stops at the batch whose loss became
NaN, before anything is saved, and exits 65; the chain stops at once with `diverged` and the
worker's own words (the step, the value, the last finite checkpoint), and status says what to
change before resuming. On the local backend, with the real worker and a real chain.

lr 1e6 reached over a 16-step warmup: on the tiny model the loss grows to ~1e12 and is NaN
around step 10, well after the checkpoints of steps 4 and 8."""

from __future__ import annotations

import math
import re

import pytest

from chain_support import Campaign, active_jobs, events_of, local_profile, prepare_data
from slmjobs import events
from support import checkpoint_step, read_progress

pytestmark = pytest.mark.timeout(600)

TRAINING = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
            "train.max_steps=40", "train.global_batch_size=4", "train.warmup_steps=16",
            "train.lr=1e6", "train.eval_every=0", "train.log_every=1",
            "checkpoint.save_every_batches=4", "checkpoint.save_every_seconds=0",
            "checkpoint.keep=-1", "data.num_workers=0", "wandb.enabled=false"]
DIVERGED = re.compile(r"^the loss became non-finite \((nan|inf|-inf)\) at step (\d+); nothing was "
                      r"saved after it: resume from the last finite checkpoint \(step (\d+)\), "
                      r"perhaps with a lower train\.lr$")


def tensors(value):
    """Every tensor inside a loaded checkpoint (model, optimizer state, ...)."""
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors(item)


def test_a_loss_that_becomes_nan_stops_the_chain_with_the_last_finite_checkpoint_newest(
        tmp_path, monkeypatch):
    import torch

    c = Campaign(tmp_path, prepare_data(tmp_path, documents=20, seq_len=32), TRAINING, [], 300)
    profile = local_profile("00:10:00", 60, {"max_links": 5, "crash_budget": 3,
                                             "no_progress_links": 3})
    monkeypatch.setenv("SLMJOBS_LOCAL_STATE", c.env["SLMJOBS_LOCAL_STATE"])
    try:
        run_dir = c.launch("blowup", c.profile("short", profile))
        evs = c.wait_settled(run_dir)
        stop = events.stop_in_force(evs)
        assert stop["reason"] == "diverged", stop
        found = DIVERGED.match(stop["detail"])
        assert found, stop["detail"]
        diverged_at, last_finite = int(found.group(2)), int(found.group(3))
        assert 0 < last_finite < diverged_at <= 40, stop["detail"]
        # nothing was saved at or after the blow-up: the newest file is the last finite one
        saved = sorted(int(m.group(1)) for p in (run_dir / "checkpoints").iterdir()
                       if (m := re.match(r"ep\d+-ba(\d+)-rank0\.pt$", p.name)))
        assert saved[-1] == last_finite == checkpoint_step(run_dir), saved
        newest = torch.load(run_dir / "checkpoints" / "latest-rank0.pt", map_location="cpu",
                            weights_only=False)
        checked = list(tensors(newest["state"]))
        assert len(checked) > 10 and all(bool(torch.isfinite(t).all()) for t in checked
                                         if t.is_floating_point())
        assert [(e["how"], e["exit_status"]) for e in events_of(run_dir, "ended")][0] == \
            ("crashed", 65)
        assert not active_jobs(run_dir, "local")  # the held successor was cancelled
        progress = read_progress(run_dir)
        assert progress["state"] == "failed" and math.isfinite(progress["loss"])
        row = c.status("blowup")
        assert (row["state"], row["stop_reason"]) == ("stopped", "diverged")
        assert "lower train.lr in the overrides of its run.yaml (the next links read them), then " \
            "continue: slmjobs resume blowup" in c.status_table("blowup")
    finally:
        c.close()
