"""Which history records count (slmjobs.history.current_history) and `slmjobs plot`'s bad input.
The plot of a real chain's history: tests/trainer/test_history.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from slmjobs.history import current_history
from slmjobs.rundir import HISTORY_FILE

REPO = Path(__file__).resolve().parents[2]


def write_history(run_dir: Path, lines: list) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines)
    (run_dir / HISTORY_FILE).write_text(text)


def train(link, step):
    return {"event": "train", "link": link, "step": step, "loss": 10.0 * link + step}


def test_a_resumed_link_supersedes_the_steps_after_its_checkpoint(tmp_path):
    write_history(tmp_path, [
        {"event": "start", "link": 1, "step": 0}, *[train(1, s) for s in range(1, 7)],
        {"event": "start", "link": 2, "step": 4}, *[train(2, s) for s in range(5, 8)],
        '{"event": "train", "link": 2, "st\n',  # torn by the kill of link 2
        {"event": "start", "link": 3, "step": 6}, *[train(3, s) for s in (7, 8)],
        {"event": "eval", "link": 3, "step": 8, "val_loss": 1.0},
        {"event": "eval", "link": 3, "step": 8, "val_loss": 2.0},  # evaluated again at one step
        "not json\n", json.dumps({"event": "train", "link": 3, "step": "9"}) + "\n",
    ])
    records = current_history(tmp_path)
    assert [(r["link"], r["step"]) for r in records if r["event"] == "train"] == [
        (1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6), (3, 7), (3, 8)]
    assert [r["val_loss"] for r in records if r["event"] == "eval"] == [2.0]
    assert [(r["link"], r["step"]) for r in records if r["event"] == "start"] == [(1, 0), (2, 4), (3, 6)]
    assert current_history(tmp_path / "nothing") == []


def slmjobs(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "slmjobs", *args], capture_output=True,
                          text=True, env=env, cwd=cwd)


def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path):
    root = Path(os.environ["SLMJOBS_RUNS_ROOT"])
    fresh = root / "fresh"
    fresh.mkdir(parents=True)
    (fresh / "run.yaml").write_text(yaml.safe_dump({"run_name": "fresh", "scheduler": "local"}))
    write_history(tmp_path / "trained", [{"event": "start", "link": None, "step": 0}, train(1, 1)])
    cases = [
        (["fresh"], f"run fresh: no metrics history yet ({fresh / HISTORY_FILE})"),
        (["nosuch"], "unknown run 'nosuch'"),
        (["trained", "--metric", "val_loss"], "run trained: no val_loss values yet"),
        (["trained", "--metric", "acc"], "--metric acc: unknown; allowed: loss, val_loss, "
                                         "bits_per_byte, lr, tokens_per_sec"),
        (["trained", "--x", "minutes"], "--x minutes: unknown; allowed: step, tokens, hours"),
        (["trained", "-o", "loss.svg"], "-o loss.svg: allowed: a path ending in .png"),
        (["trained", "-o", "/proc/loss.png"], "/proc/loss.png: cannot write the plot there"),
    ]
    for args, message in cases:
        done = slmjobs("plot", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and message in done.stderr, (args, done.stderr)
    assert not (fresh / "plots").exists() and not (tmp_path / "trained" / "plots").exists()
    assert not list(tmp_path.glob("*.svg"))
