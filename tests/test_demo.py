"""The README's demo command, as written (less the venv setup): prepare the offline corpus and
train `tiny` to the end through `slmjobs launch` on the local backend, over at least two links
(two-minute walltime, paced steps: at least 100 s of training in links of at most 90 s). About
3 minutes on an idle 2-core machine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from slmjobs import history, ledger
from slmjobs.plot import link_boundaries

REPO = Path(__file__).resolve().parent.parent


def test_readme_names_the_demo_script():
    assert "bash scripts/demo.sh" in (REPO / "README.md").read_text().split("```")[1]


def test_demo_prepares_the_offline_corpus_and_trains_tiny_to_the_end(tmp_path):
    env = dict(os.environ, SLMJOBS_SKIP_SETUP="1", WANDB_MODE="offline",
               SLMJOBS_RUNS_ROOT=str(tmp_path / "runs"), SLMJOBS_DATA_ROOT=str(tmp_path / "data"),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for key in ("SLMJOBS_CLUSTER", "SLMJOBS_DEADLINE", "WANDB_API_KEY"):
        env.pop(key, None)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-4000:]}\n{proc.stderr[-4000:]}"

    name = re.search(r"demo finished: run (\S+)", out).group(1)
    run_dir = tmp_path / "runs" / name
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["state"] == "finished" and progress["step"] == progress["max_steps"] == 200
    assert (run_dir / "checkpoints" / "latest-rank0.pt").resolve().name == "ep0-ba200-rank0.pt"
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert (run_dir / "DONE").exists()
    # The model learned something: uniform over 257 byte ids would be ln(257) = 5.55 nats.
    assert progress["loss"] < 3.5
    # It says where everything is.
    for what in ("checkpoints/", "logs/link-001.log", "progress.json", "wandb/", "metrics.jsonl",
                 "plots/loss.png"):
        assert f"{run_dir}/{what}" in out
    assert re.search(rf"{name}\s+tiny\s+1\s+\d+/\d+\s+\S+\s+finished", out)
    # The chain: handed off at least once, said so, and the plot draws it.
    ended = [e for e in ledger.read(run_dir) if e["event"] == "ended"]
    handed = [e for e in ended if e["how"] == "handed_off"]
    trained = [e for e in ended if e["how"] != "cancelled"]  # not the successor taken back
    assert handed and trained[-1]["how"] == "finished"
    for e in handed:
        assert f"link {e['link']} handed off at step {e['progress']}" in out
    boundaries = link_boundaries(run_dir, history.current_history(run_dir))
    assert [how for _, how in boundaries if how == "handed_off"], boundaries
