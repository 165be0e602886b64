"""submitit's API on slmjobs (slmjobs/submitit.py): `AutoExecutor(folder, cluster="slmjobs")`
submits callables that ride the real chain, on the real Grid Engine and on the local backend (the
counting chain on the real SLURM too).

Every submission is made by a driver process (this module run as a script, or the README's
example examples/submitit_count.py) launched all at once by the module fixture: the chains sleep
more than they compute, so they run side by side and each test waits for its own driver. Link
counts follow from the walltime, never from the machine's speed: a link counts at most
(walltime - margin) = 40 steps, one a second, so 90 steps need at least 3 links.

Run as `python test_submitit.py MODE FOLDER PROFILE`, this module is a driver; it prints one
JSON line with what it saw.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import submitit
import yaml

from slmjobs import ledger

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
EXAMPLE = ROOT / "examples" / "submitit_count.py"
WALLTIME_MIN, MARGIN, TARGET = 1, 20, 90
PER_LINK = WALLTIME_MIN * 60 - MARGIN  # the most steps one link can count
ITEMS = [3, 4, 5]
COMMAND_TOTAL = 60  # plain_count.py steps, one a second: at least 2 links


# ------------------------------------------------------------------ the drivers (in their own process)
def count_plain(target: int) -> int:
    """Not checkpointable: a link's deadline ends it."""
    for _ in range(target):
        time.sleep(1)
    return target


class CountForever(submitit.helpers.Checkpointable):
    def __call__(self) -> None:
        while True:
            time.sleep(1)


def driver(mode: str, folder: str, profile: str) -> dict:
    from slmjobs.submitit import SlmjobsJob

    # The command's chain runs with max_num_timeout=0: submitit's own count would stop it at its
    # first hand-off; slmjobs' guards let it go on.
    executor = submitit.AutoExecutor(folder, cluster="slmjobs",
                                     slmjobs_max_num_timeout=0 if mode == "command" else 3)
    executor.update_parameters(timeout_min=WALLTIME_MIN, cpus_per_task=1, slmjobs_cluster=profile,
                               name=mode)
    if mode == "plain":
        job = executor.submit(count_plain, TARGET)
        try:
            return {"job_id": job.job_id, "result": job.result()}
        except Exception as exc:  # what a submitit user sees
            return {"job_id": job.job_id, "error": type(exc).__name__, "message": str(exc),
                    "state": job.state}
    if mode == "map":
        jobs = executor.map_array(count_plain, ITEMS)
        calls = Path(os.environ["QSTAT_CALLS"])
        calls.write_text("")
        SlmjobsJob.watcher.update()  # the three jobs' states in one reading
        qstat_calls = len(calls.read_text().splitlines())
        results = [j.result() for j in jobs]  # as soon as each result pickle is written
        for _ in range(120):  # then each run's last link records its end
            SlmjobsJob.watcher.update()  # one status reading for all three
            states = [j.watcher.get_state(j.job_id, mode="cache") for j in jobs]
            if "RUNNING" not in states and "PENDING" not in states:
                break
            time.sleep(1)
        return {"job_ids": [j.job_id for j in jobs], "results": results, "states": states,
                "qstat_calls": qstat_calls}
    if mode == "cancel":
        job = executor.submit(CountForever())
        log = job.run_dir / "logs" / "link-001.log"
        while "slmjobs.wrapper: resuming from" not in (log.read_text() if log.exists() else ""):
            time.sleep(1)
        time.sleep(5)  # the wrapper's handlers are set the moment after it says so
        job.cancel()
        return {"job_id": job.job_id, "run_dir": str(job.run_dir), "done": job.done(force_check=True)}
    if mode == "command":
        from slmjobs.submitit import Command

        steps_log = Path(folder) / "steps.log"
        job = executor.submit(Command([sys.executable, str(ROOT / "examples" / "plain_count.py"),
                                       "--total", str(COMMAND_TOTAL), "--step-seconds", "1",
                                       "--steps-log", str(steps_log)]))
        return {"job_id": job.job_id, "result": job.result(),
                "steps": [line.split() for line in steps_log.read_text().splitlines()]}
    raise ValueError(mode)


# ------------------------------------------------------------------ launching them
def write_profile(tmp: Path, name: str, scheduler: str, **extra) -> str:
    data = {"scheduler": scheduler, "max_gpus": 1, "walltime_default": "00:01:00",
            "walltime_max": "01:00:00", "handoff_margin": MARGIN, "runs_root": str(tmp / "runs"),
            "chain": {"max_links": 20, "crash_budget": 1, "no_progress_links": 3}, **extra}
    if scheduler == "sge":
        data.update(pe="omp", cpus_per_gpu=1)
    if scheduler == "slurm":
        data.update(cpus_per_gpu=1)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


class Drivers:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.env = {**os.environ, "SLMJOBS_LOCAL_STATE": str(tmp / "local-state"),
                    "SLMJOBS_CACHE_DIR": str(tmp / "cache"), "SLMJOBS_CONFIG_DIR": str(tmp / "config"),
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        for name in ("SLMJOBS_RUNS_ROOT", "SLMJOBS_DEADLINE", "SLMJOBS_LINK", "SLMJOBS_CLUSTER"):
            self.env.pop(name, None)
        self.procs: dict[str, subprocess.Popen] = {}
        self.answers: dict[str, dict] = {}

    def start(self, key: str, argv: list[str], cwd: Path, env: dict | None = None) -> None:
        log = open(self.tmp / f"{key}.out", "w")
        self.procs[key] = subprocess.Popen([sys.executable, *argv], env={**self.env, **(env or {})},
                                           cwd=cwd,
                                           stdout=log, stderr=subprocess.STDOUT, text=True)

    def answer(self, key: str, timeout: float = 900) -> dict:
        if key not in self.answers:
            rc = self.procs[key].wait(timeout=timeout)
            out = (self.tmp / f"{key}.out").read_text()
            assert rc == 0, out
            self.answers[key] = json.loads(out.strip().splitlines()[-1])
        return self.answers[key]

    def cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "slmjobs", *args], env=self.env,
                              capture_output=True, text=True, timeout=120)

    def status(self, run_dir) -> dict:
        (row,) = json.loads(self.cli("status", str(run_dir), "--json").stdout)
        return row

    def wait_over(self, run_dir: Path, wait_until) -> list[dict]:
        """Until status says the run is over and nothing of it is queued, held or running."""
        def over():
            row = self.status(run_dir)
            return row["state"] in ("finished", "stopped", "failed", "cancelled") \
                and row["job_state"] not in ("queued", "held", "running")
        wait_until(over, 300, f"{run_dir.name} to be over", interval=2.0)
        return ledger.read(run_dir)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for run_dir in (self.tmp / "runs").glob("*"):
            self.cli("cancel", str(run_dir))


def run_dir_of(drivers: Drivers, job_id: str) -> Path:
    return drivers.tmp / "runs" / job_id


@pytest.fixture(scope="module")
def drivers(tmp_path_factory, sge_cluster, slurm_cluster):
    tmp = tmp_path_factory.mktemp("submitit")
    d = Drivers(tmp)
    sge = write_profile(tmp, "sge", "sge")
    sge_notify = write_profile(tmp, "sge-notify", "sge", notify=True)
    local = write_profile(tmp, "local", "local")
    slurm = write_profile(tmp, "slurm", "slurm")
    d.started = time.monotonic()
    for name, profile in (("sge", sge), ("local", local), ("slurm", slurm)):
        d.start(f"count-{name}", [str(EXAMPLE), "--folder", str(tmp / f"jobs-{name}"),
                                  "--cluster", profile, "--target", str(TARGET)], cwd=tmp)
    for name, profile in (("sge", sge), ("local", local)):
        d.start(f"plain-{name}", [str(HERE), "plain", str(tmp / f"jobs-plain-{name}"), profile], cwd=tmp)
    # map_array on Grid Engine, with a qstat first on the driver's PATH that counts its calls
    shims = tmp / "shims"
    shims.mkdir()
    (shims / "qstat").write_text(
        f'#!/bin/sh\necho "$*" >> "$QSTAT_CALLS"\nexec {shutil.which("qstat")} "$@"\n')
    (shims / "qstat").chmod(0o755)
    d.start("map", [str(HERE), "map", str(tmp / "jobs-map"), sge], cwd=tmp,
            env={"PATH": f"{shims}{os.pathsep}{os.environ['PATH']}",
                 "QSTAT_CALLS": str(tmp / "qstat-calls")})
    d.start("command", [str(HERE), "command", str(tmp / "jobs-command"), local], cwd=tmp)
    d.start("cancel", [str(HERE), "cancel", str(tmp / "jobs-cancel"), sge_notify], cwd=tmp)
    yield d
    d.close()


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("scheduler", ["sge", "local", "slurm"])
def test_a_checkpointable_counts_to_n_over_three_links_and_no_step_twice(drivers, scheduler,
                                                                         wait_until):
    found = drivers.answer(f"count-{scheduler}")
    steps = [step for step, _ in found["steps"]]
    assert steps == list(range(1, TARGET + 1))  # each step once, in order, across the links
    assert len(found["links"]) >= math.ceil(TARGET / PER_LINK) >= 3
    evs = drivers.wait_over(run_dir_of(drivers, found["job_id"]), wait_until)
    assert [e["reason"] for e in evs if e["event"] == "stopped"] == ["finished"]
    handed = [e for e in evs if e["event"] == "ended" and e.get("how") == "handed_off"]
    assert len(handed) >= 2 and all(e["exit_status"] == 75 for e in handed)
    # seen by slmjobs' own status, as any run
    row = drivers.status(run_dir_of(drivers, found["job_id"]))
    assert row["state"] == "finished" and row["kind"] == "submitit"
    assert row["checkpoints"] == len(handed)  # its own column: checkpoint() hand-offs


@pytest.mark.parametrize("scheduler", ["sge", "local"])
def test_without_checkpoint_it_fails_with_submitits_own_error_after_link_one(drivers, scheduler,
                                                                             wait_until):
    found = drivers.answer(f"plain-{scheduler}")
    assert found["error"] == "FailedJobError"  # submitit's, raised by job.result()
    assert "timed-out and not checkpointable" in found["message"]
    run_dir = run_dir_of(drivers, found["job_id"])
    evs = drivers.wait_over(run_dir, wait_until)
    (first,) = [e for e in evs if e["event"] == "ended" and e.get("link") == 1]
    assert first["how"] == "crashed"
    # no later link ran the function again: the chain stopped, visibly
    assert not [e for e in evs if e["event"] == "ended" and e.get("how") in ("finished", "handed_off")]
    drivers_row = drivers.status(run_dir)
    assert drivers_row["state"] in ("stopped", "failed")
    assert [e["event"] for e in evs].count("stopped") == 1


def test_map_array_makes_one_chain_per_item_watched_with_one_query(drivers, wait_until):
    found = drivers.answer("map")
    assert found["results"] == ITEMS
    assert found["states"] == ["COMPLETED"] * 3
    assert found["qstat_calls"] == 1  # for the three jobs together
    assert len(set(found["job_ids"])) == 3
    for job_id in found["job_ids"]:
        evs = drivers.wait_over(run_dir_of(drivers, job_id), wait_until)
        assert [e["reason"] for e in evs if e["event"] == "stopped"] == ["finished"]


def test_a_command_continues_in_the_next_link_after_exit_75_whatever_max_num_timeout(
        drivers, wait_until):
    found = drivers.answer("command")
    assert found["result"] == 0
    assert [int(step) for _, step in found["steps"]] == list(range(1, COMMAND_TOTAL + 1))
    assert len({link for link, _ in found["steps"]}) >= math.ceil(COMMAND_TOTAL / PER_LINK)
    evs = drivers.wait_over(run_dir_of(drivers, found["job_id"]), wait_until)
    assert [e["reason"] for e in evs if e["event"] == "stopped"] == ["finished"]


def test_cancel_leaves_nothing_queued_and_a_qdel_is_no_hand_off(drivers, wait_until):
    found = drivers.answer("cancel")
    run_dir = Path(found["run_dir"])
    assert found["done"] is True

    def over():
        row = drivers.status(run_dir)
        return row["state"] == "cancelled" and row["job_state"] not in ("queued", "held", "running")
    wait_until(over, 300, "the cancelled run to leave the queue", interval=2.0)
    evs = ledger.read(run_dir)
    assert not [e for e in evs if e["event"] == "ended" and e.get("how") == "handed_off"]
    assert [e["link"] for e in evs if e["event"] == "started"] == [1]
    # Grid Engine's -notify SIGUSR2 (the qdel) reached the link's wrapper, which did not pass it on
    log = (run_dir / "logs" / "link-001.log").read_text()
    assert "ignoring SIGUSR2" in log and "handing off" not in log


def test_the_wall_time_these_chains_take(drivers):
    """Not an assertion on speed: the wall time is printed for the report (pytest -s)."""
    for key in drivers.procs:
        drivers.answer(key)
    print(f"\nsubmitit chains, all together: {time.monotonic() - drivers.started:.0f} s wall")


if __name__ == "__main__":
    try:
        print(json.dumps(driver(sys.argv[1], sys.argv[2], sys.argv[3])))
    except Exception:
        traceback.print_exc()
        sys.exit(1)
