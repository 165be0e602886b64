"""A value only the job can see: the dataset is deleted after the launch accepted it. The
first link's worker exits 2, and the chain stops at once with `bad_config` and the worker's own
words: no crash budget spent, nothing left queued. On the local backend, with the real worker;
the link waits at a gate (a profile `env_setup` line) until the dataset is gone."""

from __future__ import annotations

import shutil

import pytest

from chain_support import Campaign, active_jobs, events_of, local_profile, prepare_data
from slmjobs import events

pytestmark = pytest.mark.timeout(600)

TRAINING = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64",
            "train.max_steps=20", "train.global_batch_size=4", "train.eval_every=0",
            "data.num_workers=0", "wandb.enabled=false"]


def test_a_dataset_deleted_after_launch_stops_the_chain_after_one_link(tmp_path, monkeypatch):
    c = Campaign(tmp_path, prepare_data(tmp_path, documents=20, seq_len=64), TRAINING, [], 300)
    gate = tmp_path / "gate"
    gate.touch()
    profile = local_profile("00:10:00", 60, {"max_links": 5, "crash_budget": 3,
                                             "no_progress_links": 3})
    profile["env_setup"] = [f'while [ -e "{gate}" ]; do sleep 0.1; done']
    monkeypatch.setenv("SLMJOBS_LOCAL_STATE", c.env["SLMJOBS_LOCAL_STATE"])
    try:
        run_dir = c.launch("vanished", c.profile("gated", profile))
        shutil.rmtree(c.data)
        gate.unlink()
        evs = c.wait_settled(run_dir)
        stop = events.stop_in_force(evs)
        assert stop["reason"] == "bad_config", stop
        assert "data.path=" in stop["detail"] and str(c.data) in stop["detail"], stop
        assert [e["how"] for e in events_of(run_dir, "ended")] == ["crashed", "cancelled"]
        assert not active_jobs(run_dir, "local")
        row = c.status("vanished")
        assert (row["state"], row["stop_reason"]) == ("stopped", "bad_config")
        assert "continue: slmjobs resume vanished" in c.status_table("vanished")
    finally:
        c.close()
