"""Helpers for the tests that run real chains of jobs (tests/chain/test_chain_e2e.py,
test_scheduler_faults.py): a campaign of runs launched through the real CLI on each real
scheduler, the state of a chain read from its ledger and the scheduler, and final weights
compared bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slmjobs import events, ledger, rundir
from support import assert_bitwise_equal, model_weights, wait_until  # noqa: F401 (re-exported)

CLI = [sys.executable, "-c", "import sys; from slmjobs.cli import main; sys.exit(main())"]


# The real schedulers a chain test runs on, each with its test cluster's GPUs and CPUs as a
# profile asks for them.
SCHEDULERS = ("sge", "slurm")
RESOURCE_KEYS = {"sge": {"gpu_resource": "gpus", "pe": "omp", "cpus_per_gpu": 1},
                 "slurm": {"cpus_per_gpu": 1}, "local": {}}


def cluster_profile(scheduler: str, walltime: str, margin: int, limits: dict, **extra) -> dict:
    """The test cluster of `scheduler` with short links; `extra` keys are added (env is merged)."""
    return {"scheduler": scheduler, "description": "test cluster, short links", "max_gpus": 4,
            **RESOURCE_KEYS[scheduler],
            "walltime_default": walltime, "walltime_max": "01:00:00", "handoff_margin": margin,
            # one thread per rank: the same arithmetic in every link and in the reference
            "env": {"OMP_NUM_THREADS": "1", **extra.pop("env", {})},
            "chain": dict(limits), **extra}


def local_profile(walltime: str, margin: int, limits: dict) -> dict:
    return {**cluster_profile("local", walltime, margin, limits),
            "description": "this machine, short links"}


class Campaign:
    """Runs launched through the real CLI in one root, with the same `training` overrides
    (plus `slow`, which only stretches walltime) and uninterrupted references of it."""

    def __init__(self, root: Path, data: Path, training: list[str], slow: list[str], wait: int):
        self.root = root
        self.data = data
        self.runs = root / "runs"
        self.training_overrides = training
        self.slow = slow
        self.wait = wait
        self.chains: dict[str, Path] = {}
        self.env = {**os.environ, "SLMJOBS_RUNS_ROOT": str(self.runs),
                    "SLMJOBS_LOCAL_STATE": str(root / "local-state"),
                    "SLMJOBS_CONFIG_DIR": str(root / "config"), "OMP_NUM_THREADS": "1"}
        for name in ("SLMJOBS_DEADLINE", "SLMJOBS_LINK", "SLMJOBS_JOB_START", "SLMJOBS_CLUSTER"):
            self.env.pop(name, None)
        self.references: dict[int, subprocess.Popen] = {}

    def training(self) -> list[str]:
        return [f"data.path={self.data}", *self.training_overrides]

    def cli(self, *args, check=True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*CLI, *args], env=self.env, cwd=self.root, capture_output=True,
                              text=True, timeout=120)
        if check and proc.returncode != 0:
            pytest.fail(f"slmjobs {' '.join(args)} exited {proc.returncode}: "
                        f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def profile(self, name: str, data: dict) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def launch(self, name: str, profile: Path, *extra, gpus: int = 1,
               slow: list[str] | None = None) -> Path:
        """`slow`: this chain's pacing instead of the campaign's."""
        self.cli("launch", "tiny", "--cluster", str(profile), "--name", name, "--gpus", str(gpus),
                 *self.training(), *(self.slow if slow is None else slow), *extra)
        self.chains[name] = self.runs / name
        return self.runs / name

    def wait_training(self, run_dir: Path) -> None:
        """Until the chain's first link trains (or stopped): link start-ups are CPU-bound
        (two `import composer`, ~16 CPU-s), so starting them one after another keeps each
        link's start-up short on 2 cores."""
        wait_until(lambda: rundir.read_progress(run_dir).get("state") in ("training", "handed_off")
                   or settled(run_dir), 300, f"{run_dir.name} to start training", interval=0.5)

    def start_reference(self, ranks: int) -> None:
        """The same training, uninterrupted: no deadline, same thread count, `ranks` ranks
        (two ranks each average half the batch: other arithmetic than one rank)."""
        name = f"reference-{ranks}"
        worker = ([str(Path(sys.executable).with_name("composer")), "-n", str(ranks)]
                  if ranks > 1 else [sys.executable])
        log = open(self.root / f"{name}.log", "w")
        self.references[ranks] = subprocess.Popen(
            [*worker, "-m", "trainer.train", "model=tiny", f"run_name={name}",
             f"run_dir={self.root / name}", *self.training()],
            env=self.env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT)

    def reference_weights(self, ranks: int = 1) -> dict:
        rc = self.references[ranks].wait(timeout=self.wait)
        assert rc == 0, (self.root / f"reference-{ranks}.log").read_text()[-3000:]
        return final_weights(self.root / f"reference-{ranks}")

    def status(self, name: str) -> dict:
        (row,) = json.loads(self.cli("status", name, "--json").stdout)
        return row

    def status_table(self, name: str) -> str:
        return self.cli("status", name).stdout

    def wait_settled(self, run_dir: Path) -> list[dict]:
        wait_until(lambda: settled(run_dir), self.wait, f"chain {run_dir.name} to stop",
                   interval=2.0)
        return ledger.read(run_dir)

    def close(self) -> None:
        for name, run_dir in self.chains.items():
            if not settled(run_dir):
                self.cli("cancel", name, check=False)
        for reference in self.references.values():
            if reference.poll() is None:
                reference.kill()


def prepare_data(root: Path, documents: int, seq_len: int) -> Path:
    data = root / "data" / "builtin"
    subprocess.run([sys.executable, "-m", "trainer.prepare", "--source", "builtin",
                    "--max-documents", str(documents), "--seq-len", str(seq_len), "--out",
                    str(data)], check=True, capture_output=True, timeout=300)
    return data


def events_of(run_dir: Path, kind: str | None = None) -> list[dict]:
    return [e for e in ledger.read(run_dir) if kind is None or e.get("event") == kind]


def settled(run_dir: Path) -> bool:
    """The chain stopped (any reason) and no link of it is still open in the ledger."""
    evs = ledger.read(run_dir)
    if events.stop_reason(evs) is None:
        return False
    opened = {e["link"] for e in evs if e.get("event") in ("submitted", "started")}
    return opened <= set(events.ended_links(evs))


def active_jobs(run_dir: Path, kind: str) -> dict:
    """What the scheduler itself says about every job the run ever submitted."""
    from slmjobs.backends import ACTIVE_STATES, get_backend

    ids = [str(e["job_id"]) for e in events_of(run_dir, "submitted")]
    return {j: job.state for j, job in get_backend(kind).query(ids).items()
            if job.state in ACTIVE_STATES}


def final_weights(run_dir: Path) -> dict:
    return model_weights(run_dir)
