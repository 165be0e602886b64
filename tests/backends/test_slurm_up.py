"""scripts/slurm-up.sh is idempotent: run again on the live cluster, it restarts nothing and the
cluster keeps working (scripts/test.sh runs it before every test session)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support import sbatch_script

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm-up.sh"


def test_rerun_on_a_live_cluster_keeps_it_working(slurm, tmp_path):
    rerun = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    for daemon in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"):
        assert f"{daemon} already running" in rerun.stdout, rerun.stdout  # nothing restarted
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True,
                            timeout=60).stdout
    assert "slurmctld running" in status and "slurmdbd running" in status
    # the test cluster's fake GPUs and CPUs survive the re-run
    ok, message = slurm.validate(sbatch_script(tmp_path, "after", "true", "--gres=gpu:4",
                                               "--cpus-per-task=8"))
    assert ok, message
