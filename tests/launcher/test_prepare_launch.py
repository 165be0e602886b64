"""A preparation as a run (`slmjobs prepare ... --submit`) and a training run that waits for it
(`slmjobs launch ... --after PREP`), through the real CLI; and the dry run that works on a machine
without the cluster's filesystem.

- The CPU-only job scripts (SCC, plain Grid Engine) are goldens: no GPU request, `-pe omp N` from
  --cpus, the CPU walltime limit, the worker's command with the heartbeat file.
- Bad input: one line, exit 2, nothing submitted (a qsub shim records any call), no run dir.
- A training run waiting for a preparation is checked now against what the preparation will
  produce (its plan, in its run.yaml): the dataset's path, windows vs context, vocabulary.
- `slmjobs launch gpt2 --gpus 2 --cluster scc --project P --dry-run` here (no /projectnb): the
  script, one warning line for the dataset it cannot see, exit 0; a typo still exits 2.
(Chains of real jobs: tests/chain/test_prepare_chain.py.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from slmjobs import launch, ledger, render

GOLDEN = Path(__file__).parent / "golden"
FIXED_PYTHON = "/opt/venv/bin/python"
FIXED_WORKDIR = "/home/tester/project"
PREPARE = ["--source", "/projectnb/myproj/raw/fineweb", "--tokenizer", "gpt2", "--seq-len", "1024",
           "--out", "/projectnb/myproj/data/fineweb-edu"]


def prepare_spec(cluster, cpus, monkeypatch, walltime=None):
    monkeypatch.setenv("SLMJOBS_RUNS_ROOT", "/runs")
    monkeypatch.setenv("HOME", "/home/tester")
    monkeypatch.chdir(Path("/"))
    return launch.resolve(launch.Request(
        kind="prepare", options={"args": PREPARE}, cluster=cluster, cpus=cpus, walltime=walltime,
        name=f"golden-prepare-{cpus}", project="myproj" if cluster == "scc" else None,
        python=FIXED_PYTHON, workdir=FIXED_WORKDIR))


@pytest.mark.parametrize("cluster, cpus", [("scc", 8), ("sge", 2)])
def test_golden_cpu_only_scripts(cluster, cpus, monkeypatch):
    text = render.render_link(prepare_spec(cluster, cpus, monkeypatch), 1)
    path = GOLDEN / f"{cluster}-prepare-{cpus}cpu.sh"
    if os.environ.get("SLMJOBS_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path.name} changed; regenerate if intended"
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    lines = text.splitlines()
    assert f"#$ -pe omp {cpus}" in lines
    assert not [line for line in lines if re.match(r"#\$ -l (gpus|gpu_c|gpu_memory|gpu_type)=", line)]
    worker = re.search(r'^"\$SLMJOBS_PYTHON" -m trainer.prepare (.*?)&$', text, re.S | re.M).group(1)
    assert worker.replace("\\\n", "").split() == [
        *PREPARE, "--progress-file", f"/runs/golden-prepare-{cpus}/progress.json"]
    assert 'if [ -n "${!SLOTS_VARIABLE:-}" ]; then export SLMJOBS_CPUS="${!SLOTS_VARIABLE}"; fi' in lines


def test_a_cpu_only_job_may_ask_for_the_cpu_walltime_limit(monkeypatch):
    spec = prepare_spec("scc", 4, monkeypatch, walltime="100:00:00")
    assert spec["gpus"] == 0 and spec["walltime"] == "100:00:00"
    assert "#$ -l h_rt=100:00:00" in render.render_link(spec, 1).splitlines()


# ------------------------------------------------------------------ bad input
BAD_PREPARATIONS = [
    (["--source", "builtin", "--seq-len", "0"], "--seq-len 0: must be a positive number of tokens"),
    (["--source", "/nowhere/docs.jsonl", "--out", "x"], "--source /nowhere/docs.jsonl: no such file"),
    (["--source", "builtin", "--progress-file", "p.json"],
     "prepare option --progress-file is set by slmjobs"),
    (["--out", "x"], "prepare --submit needs --source"),
    (["--source", "builtin", "--cpus", "0"], "--cpus 0: allowed is 1 or more"),
    (["--source", "builtin", "--cluster", "sge", "--walltime", "02:00:00:00"], "bad --walltime"),
]


@pytest.mark.parametrize("args, message", BAD_PREPARATIONS, ids=[" ".join(a) for a, _ in BAD_PREPARATIONS])
def test_a_bad_preparation_is_one_line_exit_2_nothing_submitted(args, message, run_cli, qsub_spy,
                                                                 runs_root, tmp_path):
    proc = run_cli("prepare", "--submit", "--cluster", "sge", *args, env={"PATH": qsub_spy["PATH"]},
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not qsub_spy["called"].exists() and list(runs_root.iterdir()) == []


def test_the_foreground_preparation_is_unchanged(run_cli, tmp_path):
    proc = run_cli("prepare", "--source", "builtin", "--max-documents", "3", "--seq-len", "32",
                   "--out", str(tmp_path / "ds"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"prepared {tmp_path / 'ds'}: 3 documents")


# ------------------------------------------------------------------ dry run anywhere
MISSION = ["launch", "gpt2", "--gpus", "2", "--cluster", "scc", "--project", "P", "--dry-run"]


def test_the_scc_dry_run_works_without_the_scc_filesystem(run_cli, qsub_spy, runs_root):
    assert not Path("/projectnb").exists()  # what this test is about: a machine that is not the SCC
    proc = run_cli(*MISSION, env={"PATH": qsub_spy["PATH"], "SLMJOBS_RUNS_ROOT": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!/bin/bash -l\n") and "#$ -l gpus=2" in proc.stdout
    assert proc.stderr.splitlines() == [
        "slmjobs: warning: not checked: data.path=builtin: no prepared dataset here at "
        "/projectnb/P/tester/slmjobs/data/builtin (no /projectnb on this machine); the job checks it "
        "(windows vs model.block_size, vocabulary, windows vs batch) when it starts"]
    assert not qsub_spy["called"].exists() and list(runs_root.iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    (["train.max_stepz=5"], "train.max_stepz: unknown key; did you mean train.max_steps?"),
    (["train.global_batch_size=511"], "train.global_batch_size=511: not divisible by the 2 ranks"),
    (["model.block_size=2048", "model.n_embd=770"], "model.n_embd=770: must be divisible by model.n_head=12"),
])
def test_the_scc_dry_run_still_refuses_what_it_can_check(extra, message, run_cli, runs_root):
    proc = run_cli(*MISSION, *extra, env={"SLMJOBS_RUNS_ROOT": ""})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_a_launch_that_would_submit_still_refuses_a_missing_dataset(run_cli, qsub_spy, runs_root):
    proc = run_cli("launch", "tiny", "--cluster", "sge", "data.path=/nowhere/ds",
                   env={"PATH": qsub_spy["PATH"]})
    assert proc.returncode == 2 and "data.path=/nowhere/ds: no prepared dataset" in proc.stderr
    assert not qsub_spy["called"].exists() and list(runs_root.iterdir()) == []


# ------------------------------------------------------------------ training that waits
@pytest.fixture
def preparing(run_cli, runs_root, tmp_path):
    """A preparation running on the local backend, slow (a 60 s piece), so it stays unfinished."""
    out = tmp_path / "data" / "ds"
    proc = run_cli("prepare", "--submit", "--cluster", "local", "--cpus", "1", "--name", "prep",
                   "--source", "builtin", "--max-documents", "5", "--seq-len", "64", "--out", str(out),
                   "--debug-piece-sleep", "60", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    yield out
    run_cli("cancel", "prep")


def test_a_training_run_waiting_for_a_preparation_is_checked_against_its_plan(preparing, run_cli,
                                                                               runs_root, tmp_path):
    spec = json.loads((runs_root / "prep" / "run-summary.json").read_text())["summary"]
    assert spec["kind"] == "prepare" and spec["gpus"] == 0
    refused = {
        "data.path=elsewhere": f"is {tmp_path}/data/elsewhere, but the preparation this run waits for "
                               f"writes {preparing}; allowed: data.path={preparing}",
        "model.block_size=32": "windows of 64 tokens are longer than model.block_size=32",
        "model.vocab_size=200": "model.vocab_size=200: smaller than the dataset tokenizer's vocabulary",
    }
    for override, message in refused.items():
        args = [f"data.path={preparing}", override] if override.startswith("model") else [override]
        proc = run_cli("launch", "tiny", "--cluster", "local", "--after", "prep", "--name", "t", *args,
                       env={"SLMJOBS_DATA_ROOT": str(tmp_path / "data")}, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr, (override, proc.stderr)
        assert not (runs_root / "t").exists()

    proc = run_cli("launch", "tiny", "--cluster", "local", "--after", "prep", "--name", "t",
                   f"data.path={preparing}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "run t: waiting for run prep to finish" in proc.stdout
    assert [e["event"] for e in ledger.read(runs_root / "t")] == ["waiting"]
    (row,) = json.loads(run_cli("status", "t", "--json").stdout)
    assert row["state"] == "waiting" and row["job_id"] is None
    assert "waiting for prep" in run_cli("status", "t").stdout
    assert run_cli("cancel", "t").returncode == 0
    (row,) = json.loads(run_cli("status", "t", "--json").stdout)
    assert row["state"] == "cancelled"
    # the preparation itself cancels as a training does: its running link and the held successor
    cancelled = run_cli("cancel", "prep")
    assert cancelled.returncode == 0 and "jobs deleted: none" not in cancelled.stdout, cancelled.stdout
    (row,) = json.loads(run_cli("status", "prep", "--json").stdout)
    assert row["state"] == "cancelled" and row["job_state"] not in ("queued", "held", "running")
