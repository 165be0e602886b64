"""progress.json across links: what a starting link shows before it has measured anything."""

from __future__ import annotations

import json

from trainer.progress import Progress

BEFORE = {"run_name": "r", "state": "handed_off", "link": 2, "step": 120, "loss": 3.21,
          "tokens_per_sec": 10240.0, "steps_per_sec": 2.5, "checkpoint_step": 120,
          "checkpoint_path": "/abs/ep0-ba120-rank0.pt", "checkpoint_time": 1.0}


def start_link(tmp_path, run_name="r") -> dict:
    path = tmp_path / "progress.json"
    Progress(path, run_name, 400, deadline=None, wandb_id=None, write=True).write()
    return json.loads(path.read_text())


def test_a_starting_link_shows_the_last_loss_and_speed_but_no_checkpoint(tmp_path):
    (tmp_path / "progress.json").write_text(json.dumps(BEFORE))
    now = start_link(tmp_path)
    assert (now["state"], now["step"], now["loss"], now["tokens_per_sec"], now["steps_per_sec"]) \
        == ("starting", 0, 3.21, 10240.0, 2.5)
    # the chain reads these: only this link's own knowledge, never a carried value
    assert now["checkpoint_step"] is None and now["checkpoint_path"] is None


def test_another_runs_heartbeat_is_not_carried(tmp_path):
    (tmp_path / "progress.json").write_text(json.dumps(BEFORE))
    assert start_link(tmp_path, run_name="other")["loss"] is None
    (tmp_path / "progress.json").write_text("{half a fi")
    assert start_link(tmp_path)["loss"] is None
