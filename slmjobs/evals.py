"""A run's evaluation scores, for status and plots (standard library only: no torch, no lm-eval).

Two places hold them (docs/CONTRACTS.md): `hellaswag` records in metrics.jsonl (eval.every,
scored inside the training job) and `evals.jsonl` (one record per task and checkpoint, written by
`python -m trainer.evaluate`, the eval run). HELLASWAG_REFERENCES is the one table of published
figures the plot draws and the README quotes.
"""

from __future__ import annotations

import json
import os

from slmjobs.rundir import history_path, read_json_lines
from slmjobs.table import Column

EVALS_FILE = "evals.jsonl"
TASK = "hellaswag"
TAIL_BYTES = 256 * 1024  # status looks for the newest hellaswag record this far from the end

# HellaSwag validation (10,042 items, 0-shot) of OpenAI's GPT-2 models; a figure means nothing
# without its convention. acc / acc_norm: lm-evaluation-harness 0.4.13's `hellaswag`, which the
# native scorer reproduces (124M: measured, /work/shared/reference/EVAL.md; 1.5B acc_norm: the
# GPT-J-6B model card's table). completion: build-nanogpt's hellaswag.py docstring (same text in
# llm.c dev/data/hellaswag.py), the acc_norm its and llm.c's training curves are compared with.
HELLASWAG_REFERENCES = {
    "gpt2": {"model": "OpenAI GPT-2 124M", "acc": 0.2892, "acc_norm": 0.3114, "completion_acc_norm": 0.2955},
    "gpt2-xl": {"model": "OpenAI GPT-2 1.5B", "acc": 0.4004, "acc_norm": 0.5089, "completion_acc_norm": 0.4893},
}


def evals_path(run_dir) -> str:
    return os.path.join(run_dir, EVALS_FILE)


def read_evals(run_dir) -> list[dict]:
    """evals.jsonl's records (a torn last line skipped); [] without one."""
    return read_json_lines(evals_path(run_dir))


def scored_points(run_dir) -> list[dict]:
    """The native HellaSwag records of evals.jsonl with a step, shaped as metrics.jsonl's
    `hellaswag` records (so the plot draws both the same way)."""
    return [{**r, "event": TASK} for r in read_evals(run_dir)
            if r.get("task") == TASK and r.get("scorer") == "native" and isinstance(r.get("step"), int)
            and isinstance(r.get("acc_norm"), (int, float))]


def last_history_score(run_dir) -> dict | None:
    """The newest `hellaswag` record in metrics.jsonl's last TAIL_BYTES (read from the end: the
    history of a long run is megabytes, and status reads many runs)."""
    try:
        with open(history_path(run_dir), "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(size - TAIL_BYTES, 0))
            tail = handle.read()
    except FileNotFoundError:
        return None
    for line in reversed(tail.splitlines()):
        if b'"hellaswag"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == TASK and isinstance(record.get("step"), int):
            return record
    return None


def latest_hellaswag(run_dir) -> dict | None:
    """{"acc_norm", "step"} of the highest step scored, during training or after (a tie goes to
    evals.jsonl: an eval run usually scores the full set)."""
    found = scored_points(run_dir)
    during = last_history_score(run_dir)
    if during is not None and isinstance(during.get("acc_norm"), (int, float)):
        found.insert(0, during)
    if not found:
        return None
    best = max(found, key=lambda r: r["step"])
    best = [r for r in found if r["step"] == best["step"]][-1]
    return {"acc_norm": best["acc_norm"], "step": best["step"]}


def _hellaswag_cell(row: dict) -> str:
    score = row.get("hellaswag")
    return "-" if not score else f"{score['acc_norm']:.4f}@{score['step']}"


# The status column of the kinds that score (train, eval): acc_norm at the step it was scored.
HELLASWAG_COLUMN = Column("HELLASWAG", "hellaswag", _hellaswag_cell)
