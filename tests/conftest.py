"""Fixtures shared by the whole suite.

- Every test gets its own runs root (SLMJOBS_RUNS_ROOT), local-backend state directory
  (SLMJOBS_LOCAL_STATE) and status cache (SLMJOBS_CACHE_DIR) under its tmp_path; local jobs a
  test leaves behind are killed after it.
- `sge` is the REAL Grid Engine (scripts/sge-up.sh starts it), `slurm` the REAL SLURM
  (scripts/slurm-up.sh). Each FAILS, never skips, when its scheduler does not answer: a missing
  scheduler is a broken test setup, not a reason to pass. Jobs submitted through them are
  deleted after the test if still queued, held or running.
- `wait_until(predicate, timeout, what)` polls instead of sleeping a fixed time.
- Tiers: markers `unit`, `cluster`, `e2e` (declared in pyproject.toml) come from what a test
  needs, so no module has to remember to mark itself: `cluster` needs a real scheduler,
  `e2e` runs the real training worker (the demo, a chain: a test can be both), and `unit` is
  everything else (no scheduler, no training process; `pytest -m unit`, ~45 s of CPU). A plain
  `pytest` (CI: scripts/test.sh) still runs them all.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from slmjobs.backends import ACTIVE_STATES, ENDED
from slmjobs.backends.local import LocalBackend
from slmjobs.backends.sge import SGEBackend
from slmjobs.backends.slurm import SlurmBackend
from support import COLLECTED_TIERS, SCHEDULER_LANES, wait_until


# What puts a test in a tier: fixtures it uses (directly or through other fixtures), or its id.
CLUSTER_FIXTURES = {"sge_cluster", "slurm_cluster"}  # the real schedulers (`sge`, `slurm` build on them)
TRAINING_FIXTURES = {"worker", "reference", "reference_two_ranks", "campaign", "bpe_run",
                     "command_chains"}  # start the worker (or `slmjobs run` chains)
TRAINING_TESTS = (  # start the worker without one of those fixtures
    "tests/test_demo.py::test_demo_",
    "tests/test_extending.py::test_the_shell_scheduler",  # a whole chain under the doc's scheduler
    "tests/launcher/test_launch.py::test_real_launch_on_the_local_backend",
    "tests/chain/test_bad_config_local.py::",  # a chain on the local backend (chain_support.Campaign)
    "tests/chain/test_damaged_checkpoint_local.py::",  # the same
    "tests/chain/test_diverged_local.py::",  # the same
    "tests/chain/test_disk_full.py::test_a_chain_on_a_full_disk",  # the same, on a tmpfs
    "tests/chain/test_scheduler_faults.py::",  # chains on Grid Engine and SLURM (and a reference)
    "tests/chain/test_prepare_chain.py::",  # preparations as chains, then training on them
    "tests/chain/test_sweep_e2e.py::",  # a sweep of chains on Grid Engine (and a reference)
    "tests/launcher/test_launch.py::test_a_launcher_killed_at_any_moment",  # links that start
    "tests/launcher/test_launch.py::test_a_run_directory_is_private",
    "tests/launcher/test_launch.py::test_a_launch_killed_while_qsub_hangs",
    "tests/trainer/test_sample_export.py::test_export_of_an_untrained_gpt2",  # no worker, but 124M: a minute
    "tests/launcher/test_eval_kind.py::test_a_training_run_then_its_eval",  # a run, then its eval run (both)
)


def tiers(item) -> list[str]:
    fixtures = set(item.fixturenames)
    found = []
    if fixtures & CLUSTER_FIXTURES:
        found.append("cluster")
    if fixtures & TRAINING_FIXTURES or item.nodeid.startswith(TRAINING_TESTS):
        found.append("e2e")
    return found or ["unit"]


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: no error where xdist is absent
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with each scheduler lane as one unit (support.SCHEDULER_LANES)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModulesAndSchedulerLanes(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "lane " + SCHEDULER_LANES[module] if module in SCHEDULER_LANES else module

    return ModulesAndSchedulerLanes(config, log)


def pytest_collection_modifyitems(config, items):
    """Runs before `-m` deselects: the stash holds every collected test's tiers (test_tiers.py)."""
    found = {}
    for item in items:
        found[item.nodeid] = tiers(item)
        for marker in found[item.nodeid]:
            item.add_marker(marker)
    config.stash[COLLECTED_TIERS] = found


@pytest.fixture(name="wait_until")
def wait_until_fixture():
    return wait_until


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    """Each test: its own runs root and local-backend state; no local job outlives it."""
    state = tmp_path / "local-state"
    monkeypatch.setenv("SLMJOBS_LOCAL_STATE", str(state))
    monkeypatch.setenv("SLMJOBS_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("SLMJOBS_CACHE_DIR", str(tmp_path / "cache"))
    yield
    _stop_local_jobs(LocalBackend(state))


def _stop_local_jobs(backend: LocalBackend) -> None:
    jobs_dir = backend.store.jobs
    if not jobs_dir.is_dir():
        return
    ids = [p.stem for p in jobs_dir.glob("*.json")]
    backend.cancel(ids)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # let the supervisors record the end and exit
        if all(job.state == ENDED for job in backend.query(ids).values()):
            return
        time.sleep(0.1)


@pytest.fixture(scope="session")
def sge_cluster():
    """The real Grid Engine answers, or every test that needs it fails."""
    for tool in ("qsub", "qstat", "qacct", "qdel"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not on PATH: start the test cluster with "
                        "`sudo bash scripts/sge-up.sh` (tests need a REAL Grid Engine)")
    try:
        proc = subprocess.run(["qstat", "-f"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("qstat -f did not answer in 30 s: is sge_qmaster running? "
                    "(sudo bash scripts/sge-up.sh)")
    if proc.returncode != 0 or "all.q@" not in proc.stdout:
        pytest.fail(f"Grid Engine is not usable (qstat -f exit {proc.returncode}): "
                    f"{proc.stderr.strip() or proc.stdout.strip()}; run `sudo bash scripts/sge-up.sh`")
    return True


@pytest.fixture(scope="session")
def slurm_cluster():
    """The real SLURM answers, or every test that needs it fails."""
    for tool in ("sbatch", "squeue", "sacct", "scancel", "scontrol"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not on PATH: start the test cluster with "
                        "`sudo bash scripts/slurm-up.sh` (tests need a REAL SLURM)")
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                              timeout=30)
        accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True,
                                    text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("sinfo or sacct did not answer in 30 s: are slurmctld and slurmdbd running? "
                    "(sudo bash scripts/slurm-up.sh)")
    # a node running, or still cleaning up after, other tests' jobs is as usable as an idle one
    if proc.returncode != 0 or proc.stdout.strip() not in ("idle", "mixed", "allocated",
                                                            "completing"):
        pytest.fail(f"SLURM is not usable (sinfo exit {proc.returncode}, node "
                    f"{proc.stdout.strip() or proc.stderr.strip()!r}); run `sudo bash scripts/slurm-up.sh`")
    if accounting.returncode != 0:
        pytest.fail(f"sacct does not answer: {accounting.stderr.strip()}; run "
                    "`sudo bash scripts/slurm-up.sh` (it starts slurmdbd)")
    return True


def tracking(backend_class):
    """The real backend that remembers what it submitted, for cleanup."""

    class Tracking(backend_class):
        def __init__(self):
            self.submitted: list[str] = []

        def submit(self, script, hold_on=None, held=False):
            job_id = super().submit(script, hold_on, held)
            self.submitted.append(job_id)
            return job_id

        def clean_up(self):
            if self.submitted:
                left = [j for j, job in self.query(self.submitted).items()
                        if job.state in ACTIVE_STATES]
                self.cancel(left)

    return Tracking


@pytest.fixture
def sge(sge_cluster):
    backend = tracking(SGEBackend)()
    yield backend
    backend.clean_up()


@pytest.fixture
def slurm(slurm_cluster):
    backend = tracking(SlurmBackend)()
    yield backend
    backend.clean_up()


@pytest.fixture
def local_backend(tmp_path):
    return LocalBackend(tmp_path / "local-state")
